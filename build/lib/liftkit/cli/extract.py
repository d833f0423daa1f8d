r"""Extract dense ViT features (with LiFT by default) for one image, a folder or a glob.

``liftkit-extract`` (installed) or ``python lift_extractor.py`` (checkout); the same flags.

    python lift_extractor.py                                   # assets/sample.jpg -> output/sample.pt (+ LiFT)
    python lift_extractor.py --image_path photos/ --output_dir feats/ --format safetensors --batch_size 8
    python lift_extractor.py --image_path img.jpg --output_path img.pt --model_type dino_vits16 \
        --lift_path lift_dino_vits16.pth --lift_iter 2

Each output file holds the (C, h', w') features of one image and their metadata; see
``liftkit/io/feature_files.py`` for the exact content of each format. Bad images are reported and skipped; the
run ends with a summary and exit code 1 if any image failed (2 for a bad flag, model or weight file).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict
from pathlib import Path
from typing import List, Optional

import torch

from liftkit.cli import options
from liftkit.cli.runner import ItemFailures, Run, provenance_strings, run_command
from liftkit.data.image_io import DEFAULT_MAX_PIXELS, list_images
from liftkit.errors import ConfigError, LiftKitError
from liftkit.io.feature_files import FORMATS, save_features
from liftkit.methods import Method

COMMAND = "lift_extractor"
DEFAULT_IMAGE = "assets/sample.jpg"  # the checkout's sample, relative to the working directory


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lift_extractor.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("input / output")
    options.add_image_path(io, [DEFAULT_IMAGE], "image file(s), folder(s) (searched recursively) or glob(s) "
                           f"(default: {DEFAULT_IMAGE} in the working directory)")
    io.add_argument("--output_path", default=None, help="output file, for a single input image")
    io.add_argument("--format", choices=FORMATS, default="pt", help="feature file format (default: pt)")
    io.add_argument("--save_vis", action="store_true",
                    help="also write <name>_vis.png: the image, PCA pictures of the backbone and the output features")
    io.add_argument("--overwrite", action="store_true", help="overwrite existing output files (default: skip them)")
    options.add_output_args(p, "output", "output folder (default: output/); the input's relative path is kept, the "
                            "extension becomes the format's", json_help=None)
    options.add_backbone_args(p)
    options.add_lift_args(p)
    m = p.add_argument_group("method")
    m.add_argument("--lift_iter", type=int, default=1, help="LiFT applications (each doubles the grid; default 1)")
    m.add_argument("--no_lift", action="store_true", help="save the backbone's own grid (no LiFT)")
    m.add_argument("--upsample", choices=("bilinear", "nearest"), default=None,
                   help="baseline instead of LiFT: upsample the backbone grid by 2^lift_iter")
    options.add_size_args(p, 224, ("short", "square"), "short side the image is resized to before rounding to patch "
                          "multiples (0: keep size; default 224)")
    options.add_runtime_args(p)
    r = p.add_argument_group("limits")
    r.add_argument("--batch_size", type=int, default=1, help="images per forward pass (same-size images are batched)")
    r.add_argument("--max_pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (w*h)")
    r.add_argument("--max_tokens", type=int, default=16384, help="refuse inputs whose patch grid is larger")
    return p


def _output_file(image: Path, root: Optional[Path], args, single: bool) -> Path:
    if single and args.output_path:
        return Path(args.output_path)
    rel = image.relative_to(root) if root is not None else Path(image.name)
    return Path(args.output_dir) / rel.with_suffix("." + args.format)


def _check_args(args) -> None:
    if args.lift_iter < 1:
        raise ConfigError(f"--lift_iter {args.lift_iter}: must be at least 1")
    if args.batch_size < 1:
        raise ConfigError(f"--batch_size {args.batch_size}: must be at least 1")
    if args.load_size < 0:
        raise ConfigError(f"--load_size {args.load_size}: must be positive (or 0 to keep the image size)")
    if args.no_lift and args.upsample:
        raise ConfigError("--no_lift and --upsample exclude each other: pick one")


def output_method(args) -> Method:
    """The method whose features are saved: the backbone grid, a baseline, or LiFT (--lift_iter steps)."""
    if args.no_lift:
        return Method.parse("low")
    return Method.parse(f"{args.upsample or 'lift'}{args.lift_iter}")


def main(argv: Optional[List[str]] = None) -> int:
    return run_command(COMMAND, build_parser(), argv, _run)


def _run(args, run: Run) -> None:
    log = run.log
    _check_args(args)
    method = output_method(args)
    use_lift = method.needs_lift
    ext = options.make_extractor(args, [method], use_lift=use_lift, instead="use --no_lift / --upsample bilinear")
    log.info(options.describe_extractor(ext))
    if use_lift:
        log.info(f"LiFT {ext.lift_path} (x{args.lift_iter})")
    images = list_images(args.image_path)
    if not images:
        raise ConfigError(f"--image_path {' '.join(args.image_path)}: no image found")
    if args.output_path and len(images) > 1:
        raise ConfigError("--output_path names one file but several images were given; use --output_dir")

    parents = [p.resolve().parent for p in images]
    root = Path(os.path.commonpath(parents)) if len(images) > 1 else None
    label = "none" if args.no_lift else (args.upsample or "lift")
    base_meta = {**ext.describe(), "layout": "CHW", "method": label, "dtype": args.dtype,
                 "lift_iter": str(0 if args.no_lift else args.lift_iter), **provenance_strings(run.info)}
    if not use_lift:
        base_meta.update(lift_path="", lift_sha256="")
    plan = list(dict.fromkeys(["low", method.name]))  # one backbone pass gives both

    failures: List[str] = []
    done = skipped = 0
    pending: "OrderedDict[tuple, list]" = OrderedDict()

    def flush(key) -> None:
        nonlocal done
        batch = pending.pop(key)
        x = torch.cat([b["x"] for b in batch])
        try:
            feats = ext.features(x, plan)
        except RuntimeError as exc:  # e.g. out of memory on a huge input
            for b in batch:
                failures.append(f"{b['path']}: {str(exc).splitlines()[0]}")
            return
        low, out = feats["low"], feats[method.name]
        for i, b in enumerate(batch):
            meta = {**base_meta, "image": str(b["path"]), "image_size": "%dx%d" % b["size"],
                    "input_size": "%dx%d" % tuple(x.shape[-2:]), "grid_low": "%dx%d" % tuple(low.shape[-2:]),
                    "grid": "%dx%d" % tuple(out.shape[-2:])}
            save_features(b["out"], out[i], meta, args.format)
            if args.save_vis:
                from liftkit.vis.panels import save_pca_panel

                title = {"none": "backbone", "lift": f"LiFT x{args.lift_iter}"}.get(label, label)
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
    log.info(f"done: {done} extracted, {skipped} skipped (exist; --overwrite to redo), {len(failures)} failed -> "
             f"{where}")
    if failures:
        raise ItemFailures(f"{len(failures)} of {len(images)} image(s) failed", failures)
