"""Where does a network's IoU come from? Pixels by target size, and false alarms.

IoU over a split is ``TP / (TP + FP + FN)`` summed over every pixel of every image, so large
targets weigh more than small ones. For each weights file this prints, per bucket of
ground-truth target area (connected components, 8-connectivity), the target pixels found
(TP) and missed (FN), the share of the targets hit at all, and the false-alarm pixels (FP:
predicted pixels on no target), so that two networks with the same IoU can be told apart.
Threshold 0.5 on the probability, images at native size padded to 32 (as ``irkd eval``).

    python scripts/size_breakdown.py DATA_ROOT A.safetensors B.safetensors [--split test]
        [--names a,b] [--out F.json]

``--split val --val-seed S`` reads the validation part a run of seed ``S`` carved from the
train split (``data.val_fraction`` 0.1, as ``irkd train``), the split to read when a finding is
to choose what to try next.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

from irkd.data import IRSTDDataset
from irkd.data.loader import split_train_val
from irkd.evaluate import predict_split
from torch_ref.predict import forward_fn, load_network, read_weights

BUCKETS = ((1, 9), (10, 29), (30, 79), (80, 10**9))


def bucket_name(lo: int, hi: int) -> str:
    """``'10-29 px'`` or ``'>=80 px'``."""
    return f">={lo} px" if hi >= 10**9 else f"{lo}-{hi} px"


def targets_by_area(region: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(bucket name, component mask)`` for each target (8-connected) of ``region``."""
    n, labels = cv2.connectedComponents(region.astype(np.uint8), connectivity=8)
    for k in range(1, n):
        comp = labels == k
        area = int(comp.sum())
        yield next(bucket_name(lo, hi) for lo, hi in BUCKETS if lo <= area <= hi), comp


def breakdown(weights: str, ds: IRSTDDataset) -> dict[str, dict[str, float]]:
    """Pixel counts and hit rates per target-area bucket for one weights file."""
    net = load_network(None, weights)
    _, info = read_weights(weights)
    out = {bucket_name(lo, hi): {"tp": 0, "fn": 0, "targets": 0, "hit": 0} for lo, hi in BUCKETS}
    fp = 0
    net.eval()
    mean, std = float(info["mean"]), float(info["std"])
    for _id, prob, mask in predict_split(ds, forward_fn(net), mean=mean, std=std):
        gt = mask > 0
        pred = prob > 0.5
        fp += int((pred & ~gt).sum())
        for name, comp in targets_by_area(gt):
            tp = int((pred & comp).sum())
            row = out[name]
            row["tp"] += tp
            row["fn"] += int(comp.sum()) - tp
            row["targets"] += 1
            row["hit"] += int(tp > 0)
    tp_all = sum(r["tp"] for r in out.values())
    fn_all = sum(r["fn"] for r in out.values())
    result: dict[str, dict[str, float]] = {k: dict(v) for k, v in out.items()}
    result["all"] = {
        "tp": tp_all,
        "fn": fn_all,
        "fp": fp,
        "iou": tp_all / max(tp_all + fn_all + fp, 1),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    """Print one table per weights file (and optionally write them as JSON)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("weights", nargs="+")
    ap.add_argument("--split", default="test", help="test, train, or val (see --val-seed)")
    ap.add_argument("--val-seed", type=int, default=0, help="run seed whose val part to read")
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--names", help="comma-separated labels, one per weights file")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    names = a.names.split(",") if a.names else a.weights
    if len(names) != len(a.weights):
        ap.error(f"--names has {len(names)} labels for {len(a.weights)} weights files")
    if a.split == "val":
        ds = IRSTDDataset(a.data, "train")
        ds.ids = split_train_val(ds.ids, a.val_fraction, a.val_seed)[1]
    else:
        ds = IRSTDDataset(a.data, a.split)
    results = {}
    for name, w in zip(names, a.weights, strict=True):
        r = breakdown(w, ds)
        results[name] = r
        print(f"\n{name}: IoU {100 * r['all']['iou']:.2f}%, FP pixels {int(r['all']['fp'])}")
        print("| target area | targets | hit % | target pixels | found (TP) % |")
        print("| --- | --- | --- | --- | --- |")
        for lo, hi in BUCKETS:
            b = r[bucket_name(lo, hi)]
            px = b["tp"] + b["fn"]
            print(
                f"| {bucket_name(lo, hi)} | {int(b['targets'])} | "
                f"{100 * b['hit'] / max(b['targets'], 1):.1f} | {int(px)} | "
                f"{100 * b['tp'] / max(px, 1):.1f} |"
            )
    if a.out:
        a.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
