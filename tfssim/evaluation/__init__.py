"""Measuring exports: the paper's metrics, evaluation on a labelled set, the threshold from
defect-free validation images (calibration) and the scoring chosen from good images alone (tuning).

:mod:`~tfssim.evaluation.metrics`, :mod:`~tfssim.evaluation.splits` and
:mod:`~tfssim.evaluation.per_type` import no TensorFlow.
"""
