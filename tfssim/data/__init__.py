"""Reading datasets, the ``tf.data`` patch pipeline, and synthetic data.

Example:
    >>> split = load_dataset("NanoTWICE")                      # layout detected
    >>> images = [read_image(p) for p in split.train]
    >>> ds = patch_dataset(images, patch_size=128, patches_per_epoch=20000, batch_size=32)
"""
from tfssim.data.io import (
    IMAGE_SUFFIXES, check_binary_mask, list_images, read_image, read_images, read_mask, read_test_masks,
)
from tfssim.data.layouts import (
    LAYOUTS, MASK_SUFFIXES, DatasetSplit, detect_layout, find_mask, load_dataset, load_folder, load_mvtec,
    load_nanotwice, mask_index, mask_names,
)
from tfssim.data.patches import fixed_patches, patch_dataset, steps_per_epoch, validate_images
from tfssim.data.synthetic import (
    TEXTURES, SyntheticDataset, add_defects, checkerboard, checkerboard_patches, defective_checkerboard,
    texture_dataset, write_dataset,
)

__all__ = [
    "IMAGE_SUFFIXES", "LAYOUTS", "MASK_SUFFIXES", "TEXTURES", "DatasetSplit", "SyntheticDataset", "add_defects",
    "check_binary_mask", "checkerboard", "checkerboard_patches", "defective_checkerboard", "detect_layout",
    "find_mask", "fixed_patches", "list_images", "load_dataset", "load_folder", "load_mvtec", "load_nanotwice",
    "mask_index", "mask_names", "patch_dataset", "read_image", "read_images", "read_mask", "read_test_masks",
    "steps_per_epoch",
    "texture_dataset", "validate_images", "write_dataset",
]
