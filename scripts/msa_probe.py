"""Where does the teacher's MSA map point? A measurement, not part of the method.

For each stage of a trained teacher and each MSA variant, over the images of a split:

- ``hit``: share of images with a target whose map maximum lies in the target region
  (the GT mask max-pooled to the stage, dilated by one cell);
- ``enrich``: mean over those images of (share of the map's mass on the target region) /
  (share of the pixels in it): 1 = no better than uniform;
- ``border``: share of images WITHOUT a target whose map maximum lies within
  ``max(scales) // 2`` cells of the image border.

Usage::

    python scripts/msa_probe.py WEIGHTS DATA_ROOT [--split test] [--n 200] [--out F.json]
        [--crop 64]   # score training-like crops instead of whole images: for each image
                      # one crop holding a target and one without (seeded)
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from irkd.data import IRSTDDataset, iter_eval
from torch_ref.distill.method import mask_to, msa_map
from torch_ref.predict import load_network, read_weights


def _variants() -> dict[str, dict]:
    return {
        "default (3,5,7 mean)": {},
        "max fusion": {"fusion": "max"},
        "border 3": {"border": 3},
        "scales 5,9,13": {"scales": (5, 9, 13)},
        "scales 5,9,13 + border 6": {"scales": (5, 9, 13), "border": 6},
    }


def _map(t: torch.Tensor, v: dict) -> torch.Tensor:
    return msa_map(
        t, v.get("scales", (3, 5, 7)), v.get("fusion", "mean"), 0.5, 1e-6, v.get("border", 0)
    )


def _inputs(ds: IRSTDDataset, mean: float, std: float, crop: int):  # noqa: ANN202
    """Yield (image (1, 1, H, W) normalised, mask (H, W) float) pairs: whole or crops."""
    rng = np.random.default_rng(0)
    for _id, x, mask, (h, w) in iter_eval(ds, mean=mean, std=std, multiple=32):
        g = np.zeros(x.shape[2:], np.float32)
        g[:h, :w] = mask > 0
        if not crop:
            yield x, g
            continue
        ys, xs = np.nonzero(g)
        if h < crop or w < crop or not len(ys):
            continue
        k = int(rng.integers(len(ys)))
        y0 = int(np.clip(ys[k] - rng.integers(crop), 0, h - crop))
        x0 = int(np.clip(xs[k] - rng.integers(crop), 0, w - crop))
        yield (
            np.ascontiguousarray(x[:, :, y0 : y0 + crop, x0 : x0 + crop]),
            g[y0 : y0 + crop, x0 : x0 + crop],
        )
        for _ in range(20):  # a crop without target, if one is found
            y0, x0 = int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
            if not g[y0 : y0 + crop, x0 : x0 + crop].any():
                yield (
                    np.ascontiguousarray(x[:, :, y0 : y0 + crop, x0 : x0 + crop]),
                    g[y0 : y0 + crop, x0 : x0 + crop],
                )
                break


def main(argv: list[str] | None = None) -> int:
    """Print (and optionally write) the probe table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("weights")
    p.add_argument("data")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--stages", default="enc0,enc1,enc2,dec0,dec1")
    p.add_argument("--out")
    p.add_argument("--crop", type=int, default=0, help="score crops of this side (0: whole)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    net = load_network(None, a.weights)
    _, info = read_weights(a.weights)
    mean, std = float(info["mean"]), float(info["std"])
    ds = IRSTDDataset(a.data, a.split)
    ds.ids = ds.ids[: a.n]
    stages = a.stages.split(",")
    stats: dict[str, dict[str, list[float]]] = {}
    for x, g in _inputs(ds, mean, std, a.crop):
        with torch.no_grad():
            _, feats = net.forward_features(torch.from_numpy(x))
        gt = torch.from_numpy(g)[None, None]
        for s in stages:
            t = feats[s]
            r = mask_to(gt, t.shape[2], t.shape[3])
            rd = F.max_pool2d(r, 3, 1, 1)
            for name, v in _variants().items():
                m = _map(t, v)[0, 0]
                key = f"{s} | {name}"
                st = stats.setdefault(key, {"hit": [], "enrich": [], "border": []})
                idx = int(torch.argmax(m))
                yy, xx = divmod(idx, m.shape[1])
                if r.sum() > 0:
                    st["hit"].append(float(rd[0, 0, yy, xx] > 0))
                    share_m = float((m * r[0, 0]).sum() / m.sum())
                    share_px = float(r.mean())
                    st["enrich"].append(share_m / share_px)
                else:
                    b = max(max(v.get("scales", (3, 5, 7))) // 2, 1)
                    hh, ww = m.shape
                    on = yy < b or xx < b or yy >= hh - b or xx >= ww - b
                    st["border"].append(float(on))
    out = {}
    print(f"{'stage | variant':40s} {'hit':>6s} {'enrich':>7s} {'border':>7s} (n_tgt, n_empty)")
    for key, st in stats.items():
        row = {k: (float(np.mean(v)) if v else None) for k, v in st.items()}
        row["n_target"] = len(st["hit"])
        row["n_empty"] = len(st["border"])
        out[key] = row
        f = lambda v: "  n/a" if v is None else f"{v:6.2f}"  # noqa: E731
        print(
            f"{key:40s} {f(row['hit'])} {f(row['enrich'])} {f(row['border'])} "
            f"({row['n_target']}, {row['n_empty']})"
        )
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
