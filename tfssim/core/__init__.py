"""The numerical core: SSIM and its parameters, the training losses, strided tiling with overlap
averaging, the residual (anomaly) map and its formulas, and resizing.

:mod:`~tfssim.core.ssim_params`, :mod:`~tfssim.core.tiling_params`, :mod:`~tfssim.core.map_formula`
and :mod:`~tfssim.core.resize` import no TensorFlow (the export's metadata and the run record check
their fields against them); :mod:`~tfssim.core.ssim` and :mod:`~tfssim.core.losses` are ``keras.ops``
code for any Keras backend; :mod:`~tfssim.core.tiling` and :mod:`~tfssim.core.features` need
TensorFlow.
"""
