"""How much of a trained network's stage feature is magnitude? A measurement, not the method.

For each stage, over training-like crops of a split (one crop holding a target and one
without per image, seeded, as ``scripts/msa_probe.py --crop``): the per-pixel channel norm
``||x_hw||_2`` on target pixels (the GT mask pooled to the stage) and on background pixels,
and the ratio of their medians. The method's per-pixel L2 normalisation (``normalize: l2``)
sets every pixel's norm to one, so that ratio is what it removes; ``normalize: l2_map`` keeps
it. Usage::

    python scripts/feature_norms.py WEIGHTS DATA_ROOT [--split train] [--n 150] [--crop 64]
        [--stages dec0,enc0,enc1] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from msa_probe import _inputs  # noqa: E402

from irkd.data import IRSTDDataset  # noqa: E402
from torch_ref.distill.method import mask_to  # noqa: E402
from torch_ref.predict import load_network, read_weights  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Print (and optionally write) the per-stage norm table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("weights")
    p.add_argument("data")
    p.add_argument("--split", default="train")
    p.add_argument("--n", type=int, default=150)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--stages", default="dec0,enc0,enc1")
    p.add_argument("--out")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    net = load_network(None, a.weights)
    _, info = read_weights(a.weights)
    ds = IRSTDDataset(a.data, a.split)
    ds.ids = ds.ids[: a.n]
    stages = a.stages.split(",")
    target: dict[str, list[np.ndarray]] = {s: [] for s in stages}
    background: dict[str, list[np.ndarray]] = {s: [] for s in stages}
    for x, g in _inputs(ds, float(info["mean"]), float(info["std"]), a.crop):
        with torch.no_grad():
            _, feats = net.forward_features(torch.from_numpy(x))
        for s in stages:
            f = feats[s]
            norm = f[0].pow(2).sum(0).sqrt().numpy()
            r = mask_to(torch.from_numpy(g)[None, None], f.shape[2], f.shape[3])[0, 0].numpy()
            target[s].append(norm[r > 0])
            background[s].append(norm[r == 0])
    rows = {}
    print(
        f"{'stage':6} {'target median':>14} {'p10':>7} {'background median':>18} "
        f"{'p10':>7} {'p90':>7} {'ratio':>6}"
    )
    for s in stages:
        t, b = np.concatenate(target[s]), np.concatenate(background[s])
        row = {
            "target_median": float(np.median(t)),
            "target_p10": float(np.percentile(t, 10)),
            "background_median": float(np.median(b)),
            "background_p10": float(np.percentile(b, 10)),
            "background_p90": float(np.percentile(b, 90)),
            "ratio_of_medians": float(np.median(t) / np.median(b)),
            "target_pixels": int(t.size),
            "background_pixels": int(b.size),
        }
        rows[s] = row
        print(
            f"{s:6} {row['target_median']:14.2f} {row['target_p10']:7.2f} "
            f"{row['background_median']:18.2f} {row['background_p10']:7.2f} "
            f"{row['background_p90']:7.2f} {row['ratio_of_medians']:6.2f}"
        )
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(
            json.dumps(
                {"weights": a.weights, "split": a.split, "n": a.n, "crop": a.crop, "stages": rows},
                indent=1,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
