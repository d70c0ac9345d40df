"""The paper's autoencoders (``tfssim.models``): architecture, VAE, saving, registry."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from tfssim import models
from tfssim.core.losses import L2Loss
from tfssim.models import VariationalAutoencoder, build_autoencoder, get_spec, validate_architecture

# Bergmann et al. 2019, Table 1 (input 128x128xC): name -> (output side, filters, kernel, stride)
PAPER_ENCODER = {
    "conv1": (64, 32, 4, 2),
    "conv2": (32, 32, 4, 2),
    "conv3": (32, 32, 3, 1),
    "conv4": (16, 64, 4, 2),
    "conv5": (16, 64, 3, 1),
    "conv6": (8, 128, 4, 2),
    "conv7": (8, 64, 3, 1),
    "conv8": (8, 32, 3, 1),
}
ORDER = list(PAPER_ENCODER)


def expected_shapes(patch: int, channels: int, d: int) -> tuple[dict, dict]:
    """Encoder/decoder layer outputs for any patch size, scaled from the paper's 128 table.

    The decoder mirrors the encoder: decoder layer "deconvK" outputs what encoder layer
    "convK" took as input (deconv1 gives back the image).
    """
    enc = {}
    for name, (side, filters, _, _) in PAPER_ENCODER.items():
        enc[name] = (side * patch // 128, side * patch // 128, filters)
    enc["conv9"] = (1, 1, d)
    inputs = [(patch, patch, channels)] + [enc[n] for n in ORDER]  # input of conv1 .. conv9
    dec = {f"deconv{k}": inputs[k - 1] for k in range(1, 10)}
    return enc, dec


def expected_param_count(channels: int, d: int, patch: int = 128) -> int:
    """Parameters from the table alone: k*k*c_in*c_out + c_out for every (de)convolution."""
    total = 0
    c_in = channels
    layers = [(f, k) for _, f, k, _ in PAPER_ENCODER.values()] + [(d, patch // 16)]
    for filters, kernel in layers:
        total += kernel * kernel * c_in * filters + filters
        c_in = filters
    # the decoder maps each layer's output back to its input: same kernels, swapped channels
    c_ins = [channels] + [f for f, _ in layers[:-1]]
    for (filters, kernel), c in zip(layers, c_ins):
        total += kernel * kernel * filters * c + c
    return total


def _shape(layer: keras.layers.Layer) -> tuple:
    return tuple(layer.output.shape[1:])


# --------------------------------------------------------------------------- architecture
def test_paper_table_shapes_and_parameter_count(capsys):
    model = build_autoencoder(128, 1, 100)
    encoder, decoder = model.get_layer("encoder"), model.get_layer("decoder")
    enc, dec = expected_shapes(128, 1, 100)
    for name, shape in enc.items():
        assert _shape(encoder.get_layer(name)) == shape, name
    for name, shape in dec.items():
        assert _shape(decoder.get_layer(name)) == shape, name
    assert tuple(model.output.shape[1:]) == (128, 128, 1)
    # kernels and strides of the table
    for name, (_, filters, kernel, stride) in PAPER_ENCODER.items():
        layer = encoder.get_layer(name)
        assert (layer.filters, layer.kernel_size, layer.strides) == (filters, (kernel, kernel), (stride, stride)), name
    conv9 = encoder.get_layer("conv9")
    assert (conv9.kernel_size, conv9.padding) == ((8, 8), "valid")
    # LeakyReLU(0.2) after every encoder layer but the latent
    slopes = [layer.negative_slope for layer in encoder.layers if isinstance(layer, keras.layers.LeakyReLU)]
    assert len(slopes) == 8 and np.allclose(slopes, 0.2)
    assert isinstance(encoder.layers[-1], keras.layers.Conv2D)

    n = model.count_params()
    with capsys.disabled():  # shown in a normal (captured, -q) run too
        print(f"\nCAE 128x128x1, d=100: {n:,} parameters (paper table: {expected_param_count(1, 100):,})")
    assert n == expected_param_count(1, 100) == 1_048_549


@pytest.mark.parametrize("patch", [32, 64])
def test_smaller_patches_end_in_1x1xd(patch):
    model = build_autoencoder(patch, 1, 20)
    encoder = model.get_layer("encoder")
    enc, dec = expected_shapes(patch, 1, 20)
    for name, shape in enc.items():
        assert _shape(encoder.get_layer(name)) == shape, name
    for name, shape in dec.items():
        assert _shape(model.get_layer("decoder").get_layer(name)) == shape, name
    assert model.count_params() == expected_param_count(1, 20, patch)
    x = np.random.default_rng(0).uniform(size=(2, patch, patch, 1)).astype(np.float32)
    code = encoder(x)
    assert tuple(code.shape) == (2, 1, 1, 20)
    out = np.asarray(model(x))
    assert out.shape == x.shape and (out > 0).all() and (out < 1).all()  # sigmoid output


def test_rgb_and_any_latent_dim():
    for d in (1, 7, 500):
        model = build_autoencoder(32, 3, d)
        assert tuple(model.get_layer("encoder").output.shape[1:]) == (1, 1, d)
        assert tuple(model.output.shape[1:]) == (32, 32, 3)
        assert model.count_params() == expected_param_count(3, d, 32)
    out = model(np.zeros((1, 32, 32, 3), np.float32))
    assert tuple(out.shape) == (1, 32, 32, 3)


def test_untrained_model_output_depends_on_input():
    """Regression: with Keras' default Glorot init the signal vanished through the 18 layers
    (reconstruction std ~5e-7 around 0.5 for any input) and training stalled at the mean image."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    for patch in (32, 128):
        model = build_autoencoder(patch, 1, 16)
        x = rng.uniform(size=(4, patch, patch, 1)).astype(np.float32)
        out = np.asarray(model(x))
        assert out.std(axis=(1, 2, 3)).mean() > 1e-3  # structure within each reconstruction
        assert np.abs(out[0] - out[1]).max() > 1e-3  # different inputs, different outputs
        # and the loss has a usable gradient for Adam (epsilon 1e-7)
        with tf.GradientTape() as tape:
            value = L2Loss()(x, model(x, training=True))
        grads = tape.gradient(value, model.trainable_weights)
        assert min(float(tf.norm(g)) for g in grads) > 1e-5


def test_validate_architecture_errors():
    validate_architecture(48, 3, 5)  # fine: 48 is a multiple of 16
    for patch in (100, 8, 0, 130):
        with pytest.raises(ValueError, match="multiple of 16"):
            validate_architecture(patch, 1, 100)
    with pytest.raises(ValueError, match="channels"):
        validate_architecture(128, 2, 100)
    with pytest.raises(ValueError, match="latent"):
        validate_architecture(128, 1, 0)
    with pytest.raises(ValueError, match="multiple of 16"):
        build_autoencoder(100, 1, 100)
    with pytest.raises(ValueError, match="channels"):
        VariationalAutoencoder(32, 2, 10)


# --------------------------------------------------------------------------- VAE
def test_vae_shapes_and_anomaly_map():
    vae = VariationalAutoencoder(32, 1, 12, num_samples=4, seed=0)
    vae.build()
    assert tuple(vae.encoder.output.shape[1:]) == (1, 1, 24)  # mean and log-variance
    x = np.random.default_rng(1).uniform(size=(3, 32, 32, 1)).astype(np.float32)
    mean, log_var = vae.encode(x)
    assert tuple(mean.shape) == tuple(log_var.shape) == (3, 1, 1, 12)
    recon = np.asarray(vae(x))
    assert recon.shape == x.shape and recon.dtype == np.float32
    samples = np.asarray(vae.sample_reconstructions(x))
    assert samples.shape == (4, 3, 32, 32, 1)
    amap = np.asarray(vae.anomaly_map(x))
    assert amap.shape == (3, 32, 32)
    assert np.isfinite(amap).all()
    # deterministic for a fixed seed
    np.testing.assert_array_equal(amap, np.asarray(vae.anomaly_map(x)))
    # -log p of the Gaussian mixture, recomputed independently in NumPy
    sigma = vae.observation_std
    dens = np.exp(-0.5 * (x[None] - samples) ** 2 / sigma ** 2) / np.sqrt(2 * np.pi * sigma ** 2)
    expected = -np.log(dens.astype(np.float64).mean(axis=0)).mean(axis=-1)
    np.testing.assert_allclose(amap, expected, rtol=1e-4, atol=1e-3)


def test_vae_rgb_and_training_adds_kl():
    vae = VariationalAutoencoder(32, 3, 8, seed=0)
    vae.build()
    x = np.random.default_rng(2).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    assert tuple(vae(x).shape) == (2, 32, 32, 3)
    assert tuple(vae.anomaly_map(x, num_samples=2).shape) == (2, 32, 32)
    vae(x, training=True)
    assert len(vae.losses) == 1
    # KL(q(z|x) || N(0, I)) summed over the latent, batch mean, on the MSE scale 2 sigma^2 / pixels
    # (VariationalAutoencoder's docstring); KL = cross-entropy - entropy, the entropy from SciPy.
    mean, log_var = (np.asarray(t, np.float64) for t in vae.encode(x))
    std = np.exp(0.5 * log_var)
    kl = 0.5 * np.log(2 * np.pi) + 0.5 * (mean ** 2 + std ** 2) - scipy.stats.norm(mean, std).entropy()
    assert kl.sum(axis=(1, 2, 3)).min() > 1e-3  # nats: an untrained encoder's posterior is not the prior
    expected = 2.0 * vae.observation_std ** 2 / (32 * 32 * 3) * kl.sum(axis=(1, 2, 3)).mean()
    np.testing.assert_allclose(float(vae.losses[0]), expected, rtol=1e-4)


# --------------------------------------------------------------------------- saving
@pytest.mark.slow  # 26-40 s per kind measured here (a fit step, saving and loading; fm builds a VGG16)
@pytest.mark.parametrize("kind", ["ssim", "l2", "vae", "fm"])
def test_every_kind_round_trips_through_keras_file(kind, tmp_path):
    keras.utils.set_random_seed(3)
    spec = get_spec(kind)
    extra = {"observation_std": 0.05, "kl_weight": 0.5, "num_samples": 3} if kind == "vae" else {}
    model = spec.build_model(patch_size=32, channels=1, latent_dim=8, **extra)
    loss = spec.build_loss(ssim_window=7, fm_weights=None)
    model.compile(optimizer=keras.optimizers.AdamW(2e-4, weight_decay=1e-5), loss=loss)
    x = np.random.default_rng(4).uniform(size=(2, 32, 32, 1)).astype(np.float32)
    model.fit(x, x, epochs=1, batch_size=2, verbose=0)  # optimizer state exists too
    before = np.asarray(model(x, training=False))

    path = tmp_path / f"{kind}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    after = np.asarray(loaded(x, training=False))
    np.testing.assert_array_equal(after, before)
    assert type(loaded) is type(model)
    assert models.kind_of(loaded) == kind
    assert type(loaded.loss) is type(loss)
    if kind == "ssim":
        assert loaded.loss.window_size == 7
    if kind == "vae":
        np.testing.assert_array_equal(np.asarray(loaded.anomaly_map(x)), np.asarray(model.anomaly_map(x)))
        assert loaded.get_config() == model.get_config()
        assert (loaded.observation_std, loaded.kl_weight, loaded.num_samples) == (0.05, 0.5, 3)
    # the optimizer state came back too (AdamW moments, step count after one step)
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 1


# --------------------------------------------------------------------------- registry
def test_registry():
    assert set(models.MODEL_KINDS) == {"ssim", "l2", "vae", "fm"}
    assert get_spec("ssim").residual == "ssim" and get_spec("fm").residual == "l2"
    assert isinstance(models.build_loss("ssim", ssim_window=7), type(get_spec("ssim").build_loss()))
    assert models.build_loss("ssim", ssim_window=7).window_size == 7
    assert isinstance(models.build_model("vae", 32, 1, 4), VariationalAutoencoder)
    assert models.build_model("l2", 32, 1, 4).name == "l2_autoencoder"
    for bad in ("unet", "", "SSIM"):
        with pytest.raises(ValueError, match="unknown model"):
            get_spec(bad)
        with pytest.raises(ValueError, match="unknown model"):
            models.build_model(bad)
    with pytest.raises(ValueError, match="cannot tell the kind"):
        models.kind_of(keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)], name="other"))
