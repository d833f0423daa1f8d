"""Measure TokenCut's tau for a backbone and facet on *training* images (the values of ``--tau auto``).

For each image of the training split of ``--data_root`` (by default the ImageNet sample LiFT is trained on, minus the
held-out validation images, ``--limit`` of them spread evenly): the backbone's own grid (short side ``--load_size``,
rounded to the patch), the histogram of the cosines of every pair of cells, and from all histograms the tau at which
the mean edge density (share of pairs above tau) equals ``--target_density``
(``liftkit.eval.tokencut_tau.tau_for_density``). It also prints the mean density at the paper's tau 0.2 and 0.3 and at
the chosen tau (with its spread over images), and writes all of it to ``--output_json``::

    python bench/calibrate_tau.py --facets key,token,value,query --limit 100 --output_json tau.json

Never run it on evaluation images (VOC, COCO): tau would then be tuned on the test set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from extractor import ViTExtractor  # noqa: E402
from liftkit.backbones.specs import DEFAULT_BACKBONE  # noqa: E402
from liftkit.data.image_io import load_image  # noqa: E402
from liftkit.errors import ConfigError, LiftKitError  # noqa: E402
from liftkit.eval.tokencut_tau import TARGET_DENSITY, cosine_histogram, densities, tau_for_density  # noqa: E402
from liftkit.train.data import find_images, screen_images, split_train_val  # noqa: E402

FACETS = ("key", "query", "value", "token")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", type=Path, default=ROOT.parent / "shared" / "data" / "imagenet-sample-images",
                   help="training images (default: the ImageNet sample LiFT is trained on)")
    p.add_argument("--val_fraction", type=float, default=0.05, help="held-out share excluded (as train_lift.py)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split (as train_lift.py)")
    p.add_argument("--limit", type=int, default=100, help="images used, spread evenly over the training split")
    p.add_argument("--model_type", default=DEFAULT_BACKBONE)
    p.add_argument("--layer", type=int, default=-1)
    p.add_argument("--facets", default="key", help=f"comma-separated, of {', '.join(FACETS)}")
    p.add_argument("--load_size", type=int, default=364, help="short side in px (VOC/COCO images are ~375-480)")
    p.add_argument("--target_density", type=float, default=TARGET_DENSITY)
    p.add_argument("--offline", action="store_true")
    p.add_argument("--output_json", type=Path, default=None)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        facets = [f.strip() for f in args.facets.split(",") if f.strip()]
        bad = [f for f in facets if f not in FACETS]
        if not facets or bad:
            raise ConfigError(f"--facets '{args.facets}': choose from {', '.join(FACETS)}")
        if args.limit < 1 or args.load_size < 14:
            raise ConfigError("--limit must be >= 1 and --load_size >= the patch size")
        if not 0 < args.target_density < 1:
            raise ConfigError(f"--target_density {args.target_density:g} must be in (0, 1)")
        usable, _ = screen_images(find_images(args.data_root), 14)
        train, _ = split_train_val(usable, args.val_fraction, args.seed)
        n = len(train)
        paths = [train[i * n // args.limit] for i in range(min(args.limit, n))]
        ext = ViTExtractor(args.model_type, layer=args.layer, lift_path=None, offline=args.offline)
    except LiftKitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    hists = {f: [] for f in facets}
    t0 = time.perf_counter()
    for k, path in enumerate(paths):
        x, _ = ext.load_image(path, load_size=args.load_size)
        for facet in facets:
            ext.facet = facet
            hists[facet].append(cosine_histogram(ext.extract_descriptors(x)[0]))
        if (k + 1) % 20 == 0:
            print(f"[calibrate_tau] {k + 1}/{len(paths)} images, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    out = {"args": {k: str(v) for k, v in vars(args).items()}, "num_images": len(paths), "layer": ext.layer,
           "facets": {}}
    print(f"{args.model_type} layer {ext.layer}, {len(paths)} training images of {args.data_root}, short side "
          f"{args.load_size}; density = mean over images of the share of cell pairs with cosine > tau")
    print(f"{'facet':<7} {'tau':>6} {'density@tau':>12} {'p10-p90 over images':>20} {'density@0.2':>12} "
          f"{'density@0.3':>12} {'median cos':>11}")
    for facet in facets:
        tau = tau_for_density(hists[facet], args.target_density)
        d = densities(hists[facet], [tau, 0.2, 0.3])
        median = tau_for_density(hists[facet], 0.5, decimals=3)
        rec = {"tau": tau, "mean_density_at_tau": float(d[:, 0].mean()),
               "density_p10_p90_at_tau": [float(np.percentile(d[:, 0], 10)), float(np.percentile(d[:, 0], 90))],
               "images_complete_at_tau": int((d[:, 0] >= 1.0).sum()),
               "mean_density_at_0.2": float(d[:, 1].mean()), "mean_density_at_0.3": float(d[:, 2].mean()),
               "median_cosine": median}
        out["facets"][facet] = rec
        p10, p90 = rec["density_p10_p90_at_tau"]
        print(f"{facet:<7} {tau:>6.2f} {rec['mean_density_at_tau']:>12.3f} {f'{p10:.2f}-{p90:.2f}':>20} "
              f"{rec['mean_density_at_0.2']:>12.3f} {rec['mean_density_at_0.3']:>12.3f} {median:>11.3f}")
    if args.output_json is not None:
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        args.output_json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    raise SystemExit(main())
