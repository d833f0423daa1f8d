"""Model selection for LiFT files on the *validation* images of a training run (never on evaluation images).

The warp-correspondence probe of ``eval_upsampler.py`` (``liftkit.eval.warp_probe``: each image against a seeded
crop / zoom / mirror / colour-jitter copy, nearest-neighbour matching, PCK of the image side), run on the held-out
split of ``--data_root`` that ``train_lift.py`` made with ``--val_fraction`` and ``--seed`` (30 of the 600 ImageNet
sample images by default), ``--warps`` seeded warps per image. Use it to compare checkpoints and recipes; report
quality on images no training or selection saw (``eval_upsampler.py`` on COCO / DAVIS / VOC)::

    PYTHONPATH=. python bench/select_on_val.py --lift_paths a=runs/a.safetensors,b=runs/b.safetensors --warps 3

Rows: ``bilinear``, ``highres`` (the backbone on the 2x input) and every labelled file; for residual LiFT files also
``<label>_half`` (bilinear + half the learned correction), a diagnostic of how much of the correction helps.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from extractor import ViTExtractor  # noqa: E402
from liftkit.data.image_io import load_image  # noqa: E402
from liftkit.eval import warp_probe as wp  # noqa: E402
from liftkit.eval.upsamplers import parse_lift_paths  # noqa: E402
from liftkit.methods import Method  # noqa: E402
from liftkit.train.data import find_images, screen_images, split_train_val  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lift_paths", required=True, help="label=path,... LiFT files to compare")
    p.add_argument("--data_root", default=str(ROOT.parent / "shared" / "data" / "imagenet-sample-images"))
    p.add_argument("--val_fraction", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0, help="the training run's --seed (its split)")
    p.add_argument("--model_type", default="dinov2_vits14_imgfocus")
    p.add_argument("--facet", default="key")
    p.add_argument("--load_size", type=int, default=224)
    p.add_argument("--warps", type=int, default=3, help="seeded warps per image")
    p.add_argument("--grid", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    ext = ViTExtractor(args.model_type, facet=args.facet, lift_path=None, offline=True)
    lifts = {}
    for label, path in parse_lift_paths(args.lift_paths):
        ext.load_lift(Path(path))  # loaded once, with the extractor's checks (backbone, weights, layer, facet)
        lifts[label] = ext.lift
    usable, _ = screen_images(find_images(Path(args.data_root)), ext.patch_size)
    _, val = split_train_val(usable, args.val_fraction, args.seed)
    size, t0 = args.load_size, time.time()

    def features(view) -> dict:
        x = ext.preprocess(view, size=(size, size))
        fe = ext.features(x, [Method.parse("low"), Method.parse("highres")])
        low = fe["low"]
        bil = F.interpolate(low, scale_factor=2, mode="bilinear", align_corners=False)
        out = {"bilinear": bil[0], "highres": fe["highres"][0]}
        for label, lift in lifts.items():
            o = lift(low, x)
            out[label] = o[0]
            if lift.head == "residual":
                out[label + "_half"] = (bil + 0.5 * (o - bil))[0]
        return out

    labels = ["bilinear", "highres"] + [k for lab, lift in lifts.items()
                                        for k in ([lab, lab + "_half"] if lift.head == "residual" else [lab])]
    acc = {k: wp.WarpPCK() for k in labels}
    with torch.no_grad():
        for i, path in enumerate(val):
            img = load_image(path)
            for r in range(args.warps):
                wp.probe_image(img, size, np.random.default_rng([7, i, r]), features, args.grid, acc)
    n = acc["bilinear"].summary()["all"]["points"]
    print(f"{len(val)} validation images x {args.warps} warps = {n:,} points ({time.time() - t0:.0f} s); "
          f"PCK % at {', '.join(str(a) for a in wp.DEFAULT_ALPHAS)}")
    for k, a in acc.items():
        s = a.summary()["all"]
        print(f"| {k} | " + " | ".join(f"{100 * v:.1f}" for v in s["pck"].values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
