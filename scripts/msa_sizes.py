"""How much attention does each target size get? The MSA map's weight on targets, by area.

For training-like crops of a split (one crop holding a target per image, seeded, as
``scripts/msa_probe.py --crop``), computes the teacher's MSA map at one stage for each set of
scales given, and reports per bucket of target area (connected components of the mask at the
stage's resolution): the mean weight ``M`` on the target's pixels (the map's mean is 1), and the
share of the target's pixels whose weight is above 1 (above a flat map). AWMSE spreads each
image's foreground weight over its target pixels in proportion to ``M``, so a target whose
interior gets ``M`` near 0 is distilled at its rim only. Usage::

    python scripts/msa_sizes.py WEIGHTS DATA_ROOT [--split train] [--n 300] [--crop 64]
        [--stage dec0] [--scales 3,5,7 --scales 3,7,15,31] [--tau 0.5] [--border 3]
        [--out F.json]
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
from size_breakdown import BUCKETS, bucket_name, targets_by_area  # noqa: E402

from irkd.data import IRSTDDataset  # noqa: E402
from parity.oracle import msa_map  # noqa: E402
from torch_ref.distill.method import mask_to  # noqa: E402
from torch_ref.predict import load_network, read_weights  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Print (and optionally write) the per-size table for each set of scales."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("weights")
    p.add_argument("data")
    p.add_argument("--split", default="train")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--stage", default="dec0")
    p.add_argument("--scales", action="append", help="comma-separated odd sizes (repeatable)")
    p.add_argument("--tau", type=float, default=0.5)
    p.add_argument("--border", type=int, default=3)
    p.add_argument("--out")
    a = p.parse_args(argv)
    scale_sets = [tuple(int(k) for k in s.split(",")) for s in (a.scales or ["3,5,7"])]
    torch.set_num_threads(1)
    net = load_network(None, a.weights)
    _, info = read_weights(a.weights)
    ds = IRSTDDataset(a.data, a.split)
    ds.ids = ds.ids[: a.n]
    feats: list[np.ndarray] = []
    regions: list[np.ndarray] = []
    for x, g in _inputs(ds, float(info["mean"]), float(info["std"]), a.crop):
        if not g.any():
            continue
        with torch.no_grad():
            _, f = net.forward_features(torch.from_numpy(x))
        t = f[a.stage]
        r = mask_to(torch.from_numpy(g)[None, None], t.shape[2], t.shape[3])[0, 0].numpy()
        feats.append(t.numpy())
        regions.append(r > 0)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for scales in scale_sets:
        acc: dict[str, list[np.ndarray]] = {}
        for feat, r in zip(feats, regions, strict=True):
            m = msa_map(feat, scales, "mean", a.tau, 1e-6, border=a.border)[0, 0]
            for name, comp in targets_by_area(r):
                acc.setdefault(name, []).append(m[comp])
        key = ",".join(str(k) for k in scales)
        results[key] = {}
        print(f"\nscales {key} (stage {a.stage}, tau {a.tau}, border {a.border}):")
        print("| target area | targets | mean M on target pixels | pixels with M > 1 |")
        print("| --- | --- | --- | --- |")
        for lo, hi in BUCKETS:
            name = bucket_name(lo, hi)
            vals = acc.get(name, [])
            if not vals:
                continue
            px = np.concatenate(vals)
            row = {
                "targets": len(vals),
                "mean_m": float(px.mean()),
                "above_1": float((px > 1).mean()),
            }
            results[key][name] = row
            print(f"| {name} | {len(vals)} | {row['mean_m']:.2f} | {100 * row['above_1']:.1f}% |")
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
