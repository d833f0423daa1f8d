#!/usr/bin/env python
"""Extract dense ViT features (with LiFT by default) for one image, a folder or a glob.

    python lift_extractor.py                                   # assets/sample.jpg -> output/sample.pt (+ LiFT)
    python lift_extractor.py --image_path photos/ --output_dir feats/ --format safetensors --batch_size 8
    python lift_extractor.py --image_path img.jpg --output_path img.pt --model_type dino_vits16 \
        --lift_path lift_dino_vits16.pth --lift_iter 2

Each output file holds the (C, h', w') features of one image and their metadata; see
``liftkit/io/feature_files.py`` for the exact content of each format. Bad images are reported and skipped; the
run ends with a summary and a non-zero exit code if any image failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import OrderedDict
from pathlib import Path
from typing import List, Optional

import torch

from extractor import DTYPES, ViTExtractor, available_backbones
from liftkit import __version__
from liftkit.backbones.specs import DEFAULT_BACKBONE
from liftkit.data.image_io import DEFAULT_MAX_PIXELS, list_images
from liftkit.device import resolve_device
from liftkit.errors import LiftKitError, failure_report
from liftkit.io.feature_files import FORMATS, save_features

HERE = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("input / output")
    io.add_argument("--image_path", nargs="+", default=[str(HERE / "assets" / "sample.jpg")],
                    help="image file(s), folder(s) (searched recursively) or glob(s) (default: assets/sample.jpg)")
    io.add_argument("--output_path", default=None, help="output file, for a single input image")
    io.add_argument("--output_dir", default="output", help="output folder (default: output/); the input's relative "
                    "path is kept, the extension becomes the format's")
    io.add_argument("--format", choices=FORMATS, default="pt", help="feature file format (default: pt)")
    io.add_argument("--save_vis", action="store_true",
                    help="also write <name>_vis.png: the image, PCA pictures of the backbone and the output features")
    io.add_argument("--overwrite", action="store_true", help="overwrite existing output files (default: skip them)")
    m = p.add_argument_group("model")
    m.add_argument("--model_type", default=DEFAULT_BACKBONE, help=f"backbone: {', '.join(available_backbones())}")
    m.add_argument("--backbone_weights", default=None, help="explicit backbone weight file (.pth/.safetensors)")
    m.add_argument("--offline", action="store_true", help="never download weights")
    m.add_argument("--random_init", action="store_true", help="random backbone weights (for tests only)")
    m.add_argument("--facet", default="key", choices=("key", "query", "value", "token"))
    m.add_argument("--layer", type=int, default=-1, help="block index, 0-based; -1 = last (default)")
    m.add_argument("--channel_order", default="dim_major", choices=("dim_major", "head_major"))
    m.add_argument("--lift_path", default="auto",
                   help="LiFT file (.safetensors or official .pth); default: the shipped pretrained/lift_<model>.safetensors")
    m.add_argument("--lift_iter", type=int, default=1, help="LiFT applications (each doubles the grid; default 1)")
    m.add_argument("--no_lift", action="store_true", help="save the backbone's own grid (no LiFT)")
    m.add_argument("--upsample", choices=("bilinear", "nearest"), default=None,
                   help="baseline instead of LiFT: upsample the backbone grid by 2^lift_iter")
    r = p.add_argument_group("runtime")
    r.add_argument("--load_size", type=int, default=224,
                   help="short side the image is resized to before rounding to patch multiples (0: keep size)")
    r.add_argument("--resize_mode", choices=("short", "square"), default="short")
    r.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    r.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    r.add_argument("--batch_size", type=int, default=1, help="images per forward pass (same-size images are batched)")
    r.add_argument("--max_pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (w*h)")
    r.add_argument("--max_tokens", type=int, default=16384, help="refuse inputs whose patch grid is larger")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _output_file(image: Path, root: Optional[Path], args, single: bool) -> Path:
    if single and args.output_path:
        return Path(args.output_path)
    rel = image.relative_to(root) if root is not None else Path(image.name)
    return Path(args.output_dir) / rel.with_suffix("." + args.format)


def _check_args(args) -> None:
    if args.lift_iter < 1:
        raise LiftKitError(f"--lift_iter {args.lift_iter}: must be at least 1")
    if args.batch_size < 1:
        raise LiftKitError(f"--batch_size {args.batch_size}: must be at least 1")
    if args.load_size < 0:
        raise LiftKitError(f"--load_size {args.load_size}: must be positive (or 0 to keep the image size)")
    if args.no_lift and args.upsample:
        raise LiftKitError("--no_lift and --upsample exclude each other: pick one")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    log = lambda msg: print(f"[lift_extractor] {msg}", file=sys.stderr)  # noqa: E731
    try:
        _check_args(args)
        device = str(resolve_device(args.device))
        log("args: " + json.dumps({**vars(args), "device": device}, sort_keys=True))
        use_lift = not (args.no_lift or args.upsample)
        ext = ViTExtractor(
            model_type=args.model_type, layer=args.layer, facet=args.facet, channel_order=args.channel_order,
            backbone_weights=args.backbone_weights, offline=args.offline, random_init=args.random_init,
            lift_path=args.lift_path if use_lift else None, device=device, dtype=args.dtype,
        )
        if use_lift and ext.lift is None:
            raise LiftKitError(
                f"no LiFT for {args.model_type}: pretrained/lift_{args.model_type}.safetensors is not shipped; pass "
                "--lift_path FILE, train one with train_lift.py, or use --no_lift / --upsample bilinear"
            )
        log(f"backbone {ext.spec.name} weights={ext.info.weights_path or 'random'} ({ext.info.origin}) "
            f"sha256={ext.info.weights_sha256[:12]} layer={ext.layer} facet={ext.facet} p={ext.patch_size}")
        if use_lift:
            log(f"LiFT {ext.lift_path} (x{args.lift_iter})")
        images = list_images(args.image_path)
        if not images:
            raise LiftKitError(f"--image_path {' '.join(args.image_path)}: no image found")
        if args.output_path and len(images) > 1:
            raise LiftKitError("--output_path names one file but several images were given; use --output_dir")
    except LiftKitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    parents = [p.resolve().parent for p in images]
    root = Path(os.path.commonpath(parents)) if len(images) > 1 else None
    method = "none" if args.no_lift else (args.upsample or "lift")
    base_meta = {**ext.describe(), "layout": "CHW", "method": method, "dtype": args.dtype,
                 "lift_iter": str(0 if args.no_lift else args.lift_iter), "liftkit_version": __version__}
    if not use_lift:
        base_meta.update(lift_path="", lift_sha256="")

    failures: List[str] = []
    done = skipped = 0
    pending: "OrderedDict[tuple, list]" = OrderedDict()

    def flush(key) -> None:
        nonlocal done
        batch = pending.pop(key)
        x = torch.cat([b["x"] for b in batch])
        try:
            low = ext.extract_descriptors(x)
            if args.no_lift:
                out = low
            elif args.upsample:
                out = ext.dense_features(x, f"{args.upsample}{args.lift_iter}")
            else:
                out = ext.lift_features(low, x, args.lift_iter)
        except RuntimeError as exc:  # e.g. out of memory on a huge input
            for b in batch:
                failures.append(f"{b['path']}: {str(exc).splitlines()[0]}")
            return
        for i, b in enumerate(batch):
            meta = {**base_meta, "image": str(b["path"]), "image_size": "%dx%d" % b["size"],
                    "input_size": "%dx%d" % tuple(x.shape[-2:]), "grid_low": "%dx%d" % tuple(low.shape[-2:]),
                    "grid": "%dx%d" % tuple(out.shape[-2:])}
            save_features(b["out"], out[i], meta, args.format)
            if args.save_vis:
                from liftkit.vis.panels import save_pca_panel

                title = {"none": "backbone", "lift": f"LiFT x{args.lift_iter}"}.get(method, method)
                maps, titles = ([low[i]], ["backbone"]) if args.no_lift else ([low[i], out[i]], ["backbone", title])
                save_pca_panel(b["out"].with_name(b["out"].stem + "_vis.png"), b["image"], maps, titles)
            done += 1

    from tqdm import tqdm

    for path in tqdm(images, desc="extract", unit="img", disable=args.quiet, file=sys.stderr):
        out_file = _output_file(path, root, args, single=len(images) == 1)
        if out_file.exists() and not args.overwrite:
            skipped += 1
            continue
        try:
            x, img = ext.load_image(path, args.load_size or None, args.resize_mode, args.max_pixels, args.max_tokens)
        except LiftKitError as exc:
            failures.append(str(exc))
            continue
        key = tuple(x.shape[-2:])
        pending.setdefault(key, []).append({"x": x, "path": path, "size": img.size, "image": img, "out": out_file})
        if len(pending[key]) >= args.batch_size:
            flush(key)
    for key in list(pending):
        flush(key)

    where = args.output_path if (args.output_path and len(images) == 1) else args.output_dir
    log(f"done: {done} extracted, {skipped} skipped (exist; --overwrite to redo), {len(failures)} failed -> {where}")
    if failures:
        print(failure_report(f"{len(failures)} of {len(images)} image(s) failed", failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
