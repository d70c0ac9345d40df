#!/usr/bin/env python
"""Seeded training losses of ``tfssim.training.train``, to compare two versions of the code.

``run`` trains each model kind for a few epochs (default: SSIM-AE and l2-AE, patch 128, 3 epochs
of 320 patches, seed 0) on the built-in brick texture data set through
:func:`tfssim.training.train` with everything else at its defaults, and writes the per-epoch
``loss`` and ``val_loss`` to a JSON file. Run it once per code version (``PYTHONPATH`` picks the
checkout), then ``compare`` the two files: it prints the largest relative difference per kind
and exits 1 when one exceeds ``--rtol`` (default 1e-4).

Examples:
    PYTHONPATH=/path/to/main python scripts/check_seeded_losses.py run before.json
    PYTHONPATH=. python scripts/check_seeded_losses.py run after.json
    python scripts/check_seeded_losses.py compare before.json after.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def run(output: str, kinds: list[str], patch_size: int, epochs: int, patches_per_epoch: int, seed: int) -> dict:
    """Train each kind in a temporary folder; return and write ``{kind: {"loss": [...], "val_loss": [...]}}``."""
    import _provenance as provenance

    from tfssim._io import atomic_write_text
    from tfssim.data import texture_dataset, write_dataset
    from tfssim.training import TrainConfig, train

    results: dict = {"tfssim": provenance.source(), "patch_size": patch_size, "epochs": epochs,
                     "patches_per_epoch": patches_per_epoch, "seed": seed, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_dataset(texture_dataset("brick", n_val=2, n_test=1, test_size=(patch_size, patch_size)),
                             Path(tmp) / "brick")
        for kind in kinds:
            config = TrainConfig(data=str(data), output=str(Path(tmp) / f"run_{kind}"), model=kind, epochs=epochs,
                                 patches_per_epoch=patches_per_epoch, patch_size=patch_size, seed=seed,
                                 val_patches=64, fm_weights=None)
            history = train(config, verbose=0).history
            results["runs"][kind] = {k: [float(v) for v in values] for k, values in history.items()
                                     if k in ("loss", "val_loss")}
    atomic_write_text(output, json.dumps(results, indent=2) + "\n")
    return results


def compare(before: dict, after: dict, rtol: float) -> tuple[bool, list[str]]:
    """Whether every loss of ``after`` is within ``rtol`` (relative) of ``before``; one line per kind."""
    lines, ok = [], True
    for kind, runs in before["runs"].items():
        other = after["runs"].get(kind)
        if other is None:
            lines.append(f"{kind}: missing in the second file")
            ok = False
            continue
        worst = 0.0
        for key, values in runs.items():
            for a, b in zip(values, other.get(key, [])):
                worst = max(worst, abs(a - b) / max(abs(a), 1e-12))
        good = worst <= rtol
        ok &= good
        lines.append(f"{kind}: largest relative difference {worst:.2e} ({'within' if good else 'ABOVE'} {rtol:g}); "
                     f"loss {runs['loss']} vs {other['loss']}")
    return ok, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train and write the losses to OUTPUT (JSON)")
    r.add_argument("output")
    r.add_argument("--models", default="ssim,l2")
    r.add_argument("--patch-size", type=int, default=128)
    r.add_argument("--epochs", type=int, default=3)
    r.add_argument("--patches-per-epoch", type=int, default=320)
    r.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("compare", help="compare two outputs of run")
    c.add_argument("before")
    c.add_argument("after")
    c.add_argument("--rtol", type=float, default=1e-4)
    args = parser.parse_args(argv)
    if args.command == "run":
        from tfssim.errors import InputError

        try:
            results = run(args.output, [k for k in args.models.split(",") if k], args.patch_size, args.epochs,
                          args.patches_per_epoch, args.seed)
        except InputError as err:
            print(f"Error: {err}", file=sys.stderr)
            return 2
        print(json.dumps(results["runs"]))
        return 0
    try:
        before, after = (json.loads(Path(p).read_text()) for p in (args.before, args.after))
    except (OSError, ValueError) as err:
        print(f"Error: cannot read the results to compare: {err}", file=sys.stderr)
        return 2
    ok, lines = compare(before, after, args.rtol)
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
