"""Imported first by every tfssim module that needs TensorFlow: without it, the import fails
with an ``ImportError`` that names ``pip install 'tfssim[cpu]' (or 'tfssim[gpu]')``
(:func:`tfssim._requirements.require_tensorflow`)."""
from tfssim._requirements import require_tensorflow

require_tensorflow()
