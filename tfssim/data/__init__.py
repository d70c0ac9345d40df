"""Reading datasets, the ``tf.data`` patch pipeline, and synthetic data.

The readers (:mod:`tfssim.data.io`), the dataset layouts and the synthetic data import no
TensorFlow. The ``tf.data`` pipeline (:mod:`tfssim.data.patches`) is loaded on first use of one of
its names (PEP 562 module ``__getattr__``), so that ``import tfssim.data`` (and every module that
reads images or masks, such as :mod:`tfssim.evaluation.metrics`) stays usable without TensorFlow installed.

Example:
    >>> split = load_dataset("NanoTWICE")                      # layout detected
    >>> images = [read_image(p) for p in split.train]
    >>> ds = patch_dataset(images, patch_size=128, patches_per_epoch=20000, batch_size=32)  # imports TF
"""
from __future__ import annotations

from tfssim._lazy import lazy_names
from tfssim.data.io import (
    IMAGE_SUFFIXES,
    check_binary_mask,
    list_images,
    read_image,
    read_images,
    read_mask,
    read_test_masks,
)
from tfssim.data.layouts import (
    LAYOUT_CHOICES,
    LAYOUTS,
    MASK_SUFFIXES,
    DatasetSplit,
    detect_layout,
    find_mask,
    load_dataset,
    load_folder,
    load_mvtec,
    load_nanotwice,
    mask_index,
    mask_names,
)
from tfssim.data.synthetic import (
    TEXTURES,
    SyntheticDataset,
    add_defects,
    checkerboard,
    checkerboard_patches,
    defective_checkerboard,
    texture_dataset,
    write_dataset,
)

# Names served by a submodule that imports TensorFlow: resolved on first access only.
_LAZY = {
    "fixed_patches": "tfssim.data.patches",
    "patch_dataset": "tfssim.data.patches",
    "steps_per_epoch": "tfssim.data.patches",
    "validate_images": "tfssim.data.patches",
}

__all__ = [
    "IMAGE_SUFFIXES", "LAYOUTS", "LAYOUT_CHOICES", "MASK_SUFFIXES", "TEXTURES", "DatasetSplit", "SyntheticDataset", "add_defects",
    "check_binary_mask", "checkerboard", "checkerboard_patches", "defective_checkerboard", "detect_layout",
    "find_mask", "fixed_patches", "list_images", "load_dataset", "load_folder", "load_mvtec", "load_nanotwice",
    "mask_index", "mask_names", "patch_dataset", "read_image", "read_images", "read_mask", "read_test_masks",
    "steps_per_epoch",
    "texture_dataset", "validate_images", "write_dataset",
]


__getattr__, __dir__ = lazy_names(__name__, _LAZY, (), light=())
