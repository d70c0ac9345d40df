"""The numerical core: SSIM and its parameters, the training losses, strided tiling with overlap
averaging, the residual (anomaly) map and its formulas, and resizing.

:mod:`~tfssim.core.ssim_params` and :mod:`~tfssim.core.map_formula` import no TensorFlow (the
export's metadata and the run record check their fields); the others are TensorFlow graph code.
"""
