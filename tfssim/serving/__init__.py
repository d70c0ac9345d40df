"""Using an export: load and run it in Python, score image files, post-process maps into regions,
call TF Serving, or score an archive on Apache Beam.

:mod:`~tfssim.serving.postprocess` and :mod:`~tfssim.serving.client` import no TensorFlow: a
service that calls TF Serving uses them after ``pip install tfssim`` alone.
"""
