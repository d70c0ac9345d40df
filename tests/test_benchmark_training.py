"""scripts/benchmark_training.py: its FLOP count (against a count by hand from the paper's table) and a tiny run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_training.py"


def _load():
    return load_script("benchmark_training")


# Multiply-adds of the encoder by hand (output pixels x k x k x C_in x C_out, DESIGN.md's table):
# 64^2*16*1*32 + 32^2*16*32*32 + 32^2*9*32*32 + 16^2*16*32*64 + 16^2*9*64*64 + 8^2*16*64*128
# + 8^2*9*128*64 + 8^2*9*64*32 + 8*8*32*100 = 60,628,992 at 128 px; the decoder mirrors it.
@pytest.mark.parametrize("patch, macs", [(128, 2 * 60_628_992), (64, 2 * (15_106_048 + 16 * 32 * 100))])
def test_conv_macs_match_a_count_by_hand(patch, macs):
    from tfssim.models import build_autoencoder

    bench = _load()
    model = build_autoencoder(patch, 1, 100)
    assert bench.conv_macs(model) == macs
    assert bench.training_flops_per_patch(model) == 6 * macs


def test_help_and_bad_arguments(capsys):
    bench = _load()
    with pytest.raises(SystemExit) as done:
        bench.main(["--help"])
    assert done.value.code == 0 and "--json" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        bench.main(["--repeats", "0"])
    assert done.value.code == 2


@pytest.mark.slow  # builds and traces a model, times a 2048^3 matmul 7 times (~15 s on the shared CPU)
def test_tiny_run_prints_json_with_the_breakdown(capsys):
    bench = _load()
    assert bench.main(["--models", "l2", "--patch-sizes", "32", "--repeats", "2", "--steps", "3", "--breakdown",
                       "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    (l2,) = result["cases"]
    assert l2["model"] == "l2" and l2["patch_size"] == 32 and len(l2["patches_per_s"]["all"]) == 2
    assert l2["patches_per_s"]["best"] >= l2["patches_per_s"]["median"] > 0
    assert 0 < l2["fraction_of_matmul"]["median"] and result["matmul"]["gflops"]["median"] > 0
    assert set(result["tfssim"]) == {"version", "commit"} and "/" not in json.dumps(result["tfssim"])
    assert set(l2["breakdown"]) == {"convolutions", "network", "step_without_pipeline"}
    for part in l2["breakdown"].values():
        assert len(part["patches_per_s"]["all"]) == 2 and part["fraction_of_matmul"]["median"] > 0


def test_the_convolution_chain_has_the_models_convolutions_and_nothing_else():
    import keras

    from tfssim.models import build_autoencoder, get_spec

    bench = _load()
    model = build_autoencoder(32, 1, 100)
    chain = bench.conv_chain(model, (8, 32, 32, 1))
    assert bench.conv_macs(chain) == bench.conv_macs(model)
    assert all(isinstance(layer, keras.layers.Conv2D | keras.layers.Conv2DTranspose) and not layer.use_bias
               and layer.activation is keras.activations.linear for layer in chain.layers)
    assert len(chain.layers) == 18
    assert bench.conv_chain(get_spec("vae").build_model(32, 1, 100), (8, 32, 32, 1)) is None
