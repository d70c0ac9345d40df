"""Image reading, dataset layouts, the tf.data patch pipeline and synthetic data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import io

from tfssim import data

# The real NanoTWICE data set, beside the repository (../shared/data/NanoTWICE); not shipped with it.
NANOTWICE = Path(__file__).resolve().parents[2] / "shared" / "data" / "NanoTWICE"
NANOTWICE_PRESENT = all((NANOTWICE / sub).is_dir() for sub in ("Normal", "Anomalous/images", "Anomalous/gt"))
needs_nanotwice = pytest.mark.skipif(
    not NANOTWICE_PRESENT,
    reason=f"needs the NanoTWICE data set (Normal/, Anomalous/images/, Anomalous/gt/) at {NANOTWICE}, absent here",
)


# --- reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp"])
def test_read_8bit_gray_lossless_formats(tmp_path, suffix):
    array = (np.arange(40 * 50) % 256).astype(np.uint8).reshape(40, 50)
    io.imsave(tmp_path / f"a{suffix}", array, check_contrast=False)
    image = data.read_image(tmp_path / f"a{suffix}")
    assert image.shape == (40, 50, 1) and image.dtype == np.float32
    np.testing.assert_allclose(image[..., 0], array / 255.0, atol=1e-7)


def test_read_16bit_png_and_tiff(tmp_path):
    array = (np.arange(30 * 20) * 100).astype(np.uint16).reshape(30, 20)
    for suffix in (".png", ".tif"):
        io.imsave(tmp_path / f"b{suffix}", array, check_contrast=False)
        np.testing.assert_allclose(data.read_image(tmp_path / f"b{suffix}")[..., 0], array / 65535.0, atol=1e-7)


def test_read_jpeg_and_channel_conversion(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200
    io.imsave(tmp_path / "c.jpg", rgb, check_contrast=False)
    as_rgb = data.read_image(tmp_path / "c.jpg", channels=3)
    assert as_rgb.shape == (32, 32, 3) and abs(as_rgb[..., 0].mean() - 200 / 255) < 0.02
    as_gray = data.read_image(tmp_path / "c.jpg", channels=1)
    assert as_gray.shape == (32, 32, 1) and abs(as_gray.mean() - 0.2125 * 200 / 255) < 0.02  # rgb2gray weights
    io.imsave(tmp_path / "g.png", np.full((8, 8), 128, np.uint8), check_contrast=False)
    gray_as_rgb = data.read_image(tmp_path / "g.png", channels=3)
    assert gray_as_rgb.shape == (8, 8, 3) and np.allclose(gray_as_rgb, 128 / 255)


def test_unreadable_image_is_a_clear_error(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        data.read_image(tmp_path / "broken.png")
    images, good, bad = data.read_images([tmp_path / "broken.png"])
    assert images == [] and good == [] and bad[0][0].name == "broken.png"


def test_folder_without_images_and_missing_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="no images .* found in"):
        data.list_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.list_images(tmp_path / "missing")


def test_wrong_channel_count_is_a_clear_error(tmp_path):
    io.imsave(tmp_path / "a.png", np.zeros((8, 8), np.uint8), check_contrast=False)
    with pytest.raises(ValueError, match="channels must be 1 .* or 3"):
        data.read_image(tmp_path / "a.png", channels=2)
    with pytest.raises(ValueError, match="image 1 has 3 channels but image 0 has 1"):
        data.patch_dataset([np.zeros((64, 64, 1), np.float32), np.zeros((64, 64, 3), np.float32)], patch_size=32)


def test_masks_are_checked(tmp_path):
    io.imsave(tmp_path / "m.png", (np.eye(10) * 255).astype(np.uint8), check_contrast=False)
    assert data.read_mask(tmp_path / "m.png").sum() == 10
    with pytest.raises(ValueError, match=r"is 10x10 but its image is 12x10"):
        data.read_mask(tmp_path / "m.png", shape=(12, 10))
    io.imsave(tmp_path / "n.png", (np.arange(100).reshape(10, 10) % 3 * 100).astype(np.uint8), check_contrast=False)
    with pytest.raises(ValueError, match="not binary"):
        data.read_mask(tmp_path / "n.png")


def test_test_masks_are_read_at_their_image_size_and_empty_for_good_images(tmp_path):
    io.imsave(tmp_path / "m.png", (np.eye(10) * 255).astype(np.uint8), check_contrast=False)
    images = [np.zeros((10, 10, 1)), np.zeros((6, 7))]
    defective, good = data.read_test_masks([tmp_path / "m.png", None], images)
    np.testing.assert_array_equal(defective, np.eye(10, dtype=bool))
    assert good.shape == (6, 7) and good.dtype == bool and not good.any()
    with pytest.raises(ValueError, match=r"is 10x10 but its image is 6x7"):
        data.read_test_masks([tmp_path / "m.png"], images[1:])
    with pytest.raises(ValueError, match="2 mask paths but 1 images"):
        data.read_test_masks([None, None], images[:1])


# --- layouts ---------------------------------------------------------------------------------


@needs_nanotwice
def test_nanotwice_layout_as_distributed():
    split = data.load_dataset(NANOTWICE)
    assert split.layout == "nanotwice"
    assert (len(split.train), len(split.val), len(split.test)) == (4, 1, 40)
    assert split.val[0].name == "ITIA1145.tif"
    assert all(m.name == f"{p.stem}_gt.png" for p, m in zip(split.test, split.test_masks))
    image = data.read_image(split.test[0])
    mask = data.read_mask(split.test_masks[0], shape=image.shape)
    assert mask.shape == image.shape[:2] and 0 < mask.mean() < 0.5


def _png(path: Path, shape=(40, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    io.imsave(path, np.zeros(shape, np.uint8), check_contrast=False)


def test_mvtec_layout(tmp_path):
    root = tmp_path / "carpet"
    for i in range(10):
        _png(root / "train" / "good" / f"{i:03d}.png")
    _png(root / "test" / "good" / "000.png")
    for i in range(2):
        _png(root / "test" / "cut" / f"{i:03d}.png")
        _png(root / "ground_truth" / "cut" / f"{i:03d}_mask.png")
    split = data.load_dataset(root, val_fraction=0.2, seed=1)
    assert split.layout == "mvtec" and len(split.train) == 8 and len(split.val) == 2
    assert not set(split.train) & set(split.val)
    assert split.test_labels == ["cut", "cut", "good"]
    assert split.test_masks[2] is None and split.test_masks[0].name == "000_mask.png"
    assert data.load_dataset(root, val_fraction=0.2, seed=1) == split  # seeded
    (root / "ground_truth" / "cut" / "001_mask.png").unlink()
    with pytest.raises(ValueError, match=r"no mask for test image .*001\.png .*looked for 001_gt\.\*, 001\.\*, 001_mask\.\*"):
        data.load_dataset(root)
    _png(root / "ground_truth" / "cut" / "001_gt.png")  # every loader takes every name of MASK_SUFFIXES
    assert data.load_dataset(root).test_masks[1].name == "001_gt.png"


def test_one_list_of_mask_names_for_every_loader_and_for_prediction(tmp_path):
    from tfssim.cli import predict
    from tfssim.serving import prediction

    assert data.MASK_SUFFIXES == ("_gt", "", "_mask")
    # prediction looks masks up with data.find_mask: neither it nor its command holds a list of its own
    assert not any(hasattr(module, name) for module in (prediction, predict) for name in ("MASK_SUFFIXES", "find_mask"))
    for name in ("a_gt.png", "b.TIF", "c_mask.png", "d_label.png"):
        _png(tmp_path / name)
    assert [data.find_mask(tmp_path, f"x/{s}.png") for s in "abcd"] == [
        tmp_path / "a_gt.png", tmp_path / "b.TIF", tmp_path / "c_mask.png", None]
    assert data.mask_names("x/a.png") == "a_gt.*, a.*, a_mask.*"


def _folder_dataset(root: Path) -> Path:
    for i in range(3):
        _png(root / "train" / f"t{i}.png")
    return root


@pytest.mark.parametrize("suffix", ["_gt", "", "_mask"])
def test_plain_folder_finds_masks_of_every_suffix_and_good_images_need_none(tmp_path, suffix):
    root = _folder_dataset(tmp_path / "ds")
    for stem in ("a", "b", "ok"):
        _png(root / "test" / f"{stem}.png")
    for stem in ("a", "b"):
        _png(root / "ground_truth" / f"{stem}{suffix}.png")
    split = data.load_dataset(root, val_fraction=0.34, seed=0)
    assert split.layout == "folder" and [p.name for p in split.test] == ["a.png", "b.png", "ok.png"]
    assert [m and m.name for m in split.test_masks] == [f"a{suffix}.png", f"b{suffix}.png", None]
    assert split.test_labels == ["defect", "defect", "good"]


def test_plain_folder_refuses_masks_that_fit_no_test_image(tmp_path):
    # Misnamed masks used to leave every test image "good" with an all-zero mask: silently wrong metrics.
    root = _folder_dataset(tmp_path / "ds")
    _png(root / "test" / "a.png")
    _png(root / "ground_truth" / "a-label.png")
    with pytest.raises(ValueError, match=r"1 mask\(s\) in .*ground_truth fit no image in .*test: a-label\.png; "
                                         r"a test image <stem> takes the mask <stem>_gt or <stem> or <stem>_mask"):
        data.load_dataset(root)


def test_folder_with_defect_subfolders_needs_a_mask_for_every_defect_image(tmp_path):
    root = _folder_dataset(tmp_path / "ds")
    _png(root / "test" / "good" / "g.png")
    _png(root / "test" / "crack" / "c1.png")
    _png(root / "test" / "crack" / "c2.png")
    _png(root / "test" / "hole" / "h1.png")
    _png(root / "ground_truth" / "crack" / "c1_gt.png")
    _png(root / "ground_truth" / "crack" / "c2_mask.png")
    _png(root / "ground_truth" / "h1.png")  # no ground_truth/hole/: the ground-truth folder itself
    split = data.load_dataset(root)
    assert split.layout == "folder" and split.test_labels == ["crack", "crack", "good", "hole"]
    assert [m and m.name for m in split.test_masks] == ["c1_gt.png", "c2_mask.png", None, "h1.png"]
    (root / "ground_truth" / "crack" / "c2_mask.png").unlink()
    with pytest.raises(ValueError, match=r"no mask for test image .*crack/c2\.png in .*ground_truth/crack "
                                         r"\(looked for c2_gt\.\*, c2\.\*, c2_mask\.\*\)"):
        data.load_dataset(root)
    for path in (root / "ground_truth").rglob("*.png"):
        path.unlink()
    (root / "ground_truth" / "crack").rmdir()
    (root / "ground_truth").rmdir()
    with pytest.raises(ValueError, match=r"defect folder .*crack need ground-truth masks.*looked for c1_gt\.\*"):
        data.load_dataset(root)


def test_nanotwice_layout_names_a_test_image_without_mask(tmp_path):
    root = tmp_path / "nt"
    for i in range(2):
        _png(root / "Normal" / f"n{i}.tif")
    for stem in ("x", "y"):
        _png(root / "Anomalous" / "images" / f"{stem}.tif")
    _png(root / "Anomalous" / "gt" / "x_gt.png")
    with pytest.raises(ValueError, match=r"no mask for test image .*y\.tif .*looked for y_gt\.\*, y\.\*, y_mask\.\*"):
        data.load_dataset(root)
    _png(root / "Anomalous" / "gt" / "y_mask.png")
    assert [m.name for m in data.load_dataset(root).test_masks] == ["x_gt.png", "y_mask.png"]


def test_plain_folder_and_structured_folder(tmp_path):
    for i in range(5):
        _png(tmp_path / "plain" / f"{i}.png")
    split = data.load_dataset(tmp_path / "plain", val_fraction=0.2)
    assert split.layout == "folder" and len(split.train) == 4 and len(split.val) == 1 and split.test == []
    ds = data.texture_dataset("gravel", n_val=1, n_test=2, test_size=(64, 64))
    root = data.write_dataset(ds, tmp_path / "structured")
    split = data.load_dataset(root)
    assert (len(split.train), len(split.val), len(split.test)) == (1, 1, 2)
    mask = data.read_mask(split.test_masks[0])
    np.testing.assert_array_equal(mask, ds.test_masks[0])
    np.testing.assert_allclose(data.read_image(split.test[0]), ds.test[0], atol=1e-4)  # 16-bit round trip


def test_unknown_layout_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset layout 'kitti'"):
        data.load_dataset(tmp_path, layout="kitti")


# --- patch pipeline --------------------------------------------------------------------------


def _images():
    rng = np.random.default_rng(0)
    return [rng.random((90, 120, 1), dtype=np.float32), rng.random((70, 64, 1), dtype=np.float32)]


def test_patches_have_the_right_shape_dtype_and_range():
    x, y = next(iter(data.patch_dataset(_images(), patch_size=32, patches_per_epoch=64, batch_size=16)))
    assert x.shape == (16, 32, 32, 1) and x.dtype.name == "float32"
    assert 0.0 <= float(x.numpy().min()) and float(x.numpy().max()) <= 1.0
    np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_patches_are_crops_of_the_images_without_augmentation():
    images = _images()
    x, _ = next(iter(data.patch_dataset(images, patch_size=16, batch_size=8, augment=False)))
    windows = [np.lib.stride_tricks.sliding_window_view(img[..., 0], (16, 16)) for img in images]
    for patch in x.numpy()[..., 0]:
        assert any(np.all(w == patch, axis=(2, 3)).any() for w in windows)


@pytest.mark.parametrize("kind, stored", [("8bit", "uint8"), ("16bit", "uint16"), ("float", "float32")])
def test_patches_are_exact_crops_whatever_the_storage(kind, stored):
    # Images of different widths and 3 channels: the unpadded buffer must use each image's own
    # row stride, and 8-/16-bit codes must come back bit-identical to read_image's floats.
    from tfssim.data.patches import _storage_dtype

    rng = np.random.default_rng(1)
    shapes = [(40, 57, 3), (45, 36, 3), (36, 80, 3)]
    if kind == "8bit":
        images = [rng.integers(0, 256, s).astype(np.float32) / 255.0 for s in shapes]
    elif kind == "16bit":
        images = [rng.integers(0, 65536, s).astype(np.float32) / 65535.0 for s in shapes]
    else:
        images = [rng.random(s, dtype=np.float32) for s in shapes]
    assert _storage_dtype(images)[0] == np.dtype(stored)
    x, _ = next(iter(data.patch_dataset(images, patch_size=16, patches_per_epoch=64, batch_size=64, augment=False)))
    windows = [np.lib.stride_tricks.sliding_window_view(img, (16, 16, 3))[:, :, 0] for img in images]
    found = []
    for patch in x.numpy():
        hits = [i for i, w in enumerate(windows) if np.all(w == patch, axis=(2, 3, 4)).any()]
        assert hits, "a patch that is no crop of any image"
        found.extend(hits)
    assert set(found) == {0, 1, 2}  # every image contributes


@pytest.mark.slow  # 9 s measured (2 cores shared with other jobs)
def test_same_seed_same_patches_and_resume_skips_ahead():
    images = _images()
    a = [b[0].numpy() for b in data.patch_dataset(images, 32, 128, 16, seed=3).take(4)]
    b = [b[0].numpy() for b in data.patch_dataset(images, 32, 128, 16, seed=3).take(4)]
    c = next(iter(data.patch_dataset(images, 32, 128, 16, seed=4)))[0].numpy()
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c)
    resumed = next(iter(data.patch_dataset(images, 32, 128, 16, seed=3, start_batch=3)))[0].numpy()
    np.testing.assert_array_equal(resumed, a[3])


def test_one_epoch_mode_and_augmentation_changes_patches():
    images = _images()
    epoch = list(data.patch_dataset(images, 32, 100, 16, repeat=False))
    assert len(epoch) == data.steps_per_epoch(100, 16) == 6
    plain = next(iter(data.patch_dataset(images, 32, 64, 16, seed=0, augment=False)))[0].numpy()
    augmented = next(iter(data.patch_dataset(images, 32, 64, 16, seed=0, augment=True)))[0].numpy()
    assert not np.array_equal(plain, augmented)


def test_batch_augmentation_matches_numpy_flips_and_rotations():
    # The batch-level augmentation against NumPy's flips and rot90 (an independent oracle) for
    # every flip pair and every turn count.
    import tensorflow as tf

    from tfssim.data.patches import _augment_batch

    rng = np.random.default_rng(0)
    patches = rng.random((16, 8, 8, 2)).astype(np.float32)
    flips = np.array([[a, b] for a in (0.2, 0.7) for b in (0.2, 0.7)] * 4, np.float32)
    turns = np.repeat(np.arange(4, dtype=np.int32), 4)
    got = _augment_batch(tf.constant(patches), tf.constant(flips), tf.constant(turns)).numpy()
    for i in range(16):
        want = patches[i]
        want = want[:, ::-1] if flips[i, 0] < 0.5 else want
        want = want[::-1] if flips[i, 1] < 0.5 else want
        np.testing.assert_array_equal(got[i], np.rot90(want, turns[i], axes=(0, 1)))


def test_augmented_patches_are_flips_or_rotations_of_the_plain_crops():
    # Augmentation changes no crop: the same index gives the same crop, in one of its 8
    # orientations, with and without augmentation; and over 64 patches several orientations occur.
    images = _images()
    plain = next(iter(data.patch_dataset(images, 32, 64, 64, seed=5, augment=False)))[0].numpy()
    augmented = next(iter(data.patch_dataset(images, 32, 64, 64, seed=5, augment=True)))[0].numpy()
    seen = set()
    for p, a in zip(plain, augmented):
        variants = [np.rot90(f, k, axes=(0, 1)) for f in (p, p[:, ::-1]) for k in range(4)]
        matches = [j for j, v in enumerate(variants) if np.array_equal(v, a)]
        assert matches
        seen.add(matches[0])
    assert len(seen) >= 4


def test_patch_larger_than_an_image_is_a_clear_error():
    with pytest.raises(ValueError, match=r"image 1 is 70x64, smaller than the 128x128 patch; use a smaller --patch-size"):
        data.patch_dataset([np.zeros((200, 200, 1), np.float32), np.zeros((70, 64, 1), np.float32)], patch_size=128)
    with pytest.raises(ValueError, match="no images to draw patches from"):
        data.patch_dataset([], patch_size=32)


def test_fixed_patches_are_deterministic():
    a = data.fixed_patches(_images(), 32, 10, seed=1)
    b = data.fixed_patches(_images(), 32, 10, seed=1)
    assert a.shape == (10, 32, 32, 1)
    np.testing.assert_array_equal(a, b)


# --- synthetic -------------------------------------------------------------------------------


def test_toy_checkerboards_and_exact_defect_mask():
    boards = data.checkerboard_patches(6, size=64, seed=0)
    assert boards.shape == (6, 64, 64, 1) and boards.min() >= 0.1 - 1e-6 and boards.max() <= 0.9 + 1e-6
    image, mask = data.defective_checkerboard(size=128, seed=0)
    clean = data.checkerboard(128, 16.0, 15.0)
    assert mask.any()
    np.testing.assert_array_equal(mask, np.abs(image - clean)[..., 0] > 1e-6)
    np.testing.assert_allclose(image[mask, 0], 0.5)


def test_texture_dataset_defects_match_masks_and_held_out_region():
    ds = data.texture_dataset("brick", n_val=2, n_test=3, seed=0)
    assert ds.train[0].shape == (320, 512, 1) and len(ds.val) == 2 and len(ds.test) == 3
    for image, mask in zip(ds.test, ds.test_masks):
        assert mask.shape == image.shape[:2] and 0.005 < mask.mean() < 0.3
