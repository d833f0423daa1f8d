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
import json
import os
import time
from pathlib import Path
from typing import List, Optional

from liftkit.cli import options
from liftkit.cli.extract_pipeline import SAVE_DTYPES, Job, extract_shard
from liftkit.cli.runner import ItemFailures, Run, provenance_strings, run_command
from liftkit.data.image_io import DEFAULT_MAX_PIXELS, list_images
from liftkit.data.loader import default_num_workers, shard
from liftkit.errors import ConfigError
from liftkit.io.feature_files import FORMATS, SUFFIX
from liftkit.io.feature_store import ShardWriter, scan_store, write_index
from liftkit.methods import Method
from liftkit.train.distributed import barrier, gather_objects

COMMAND = "lift_extractor"
MANIFEST_FIELDS = ("file", "output", "grid", "status", "error")
MEMORY_FLAGS = {"size": "--load_size", "lift_iter": "--lift_iter", "methods": "--lift_iter", "batch": "--batch_size"}
DEFAULT_IMAGE = "assets/sample.jpg"  # the checkout's sample, relative to the working directory


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lift_extractor.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("input / output")
    options.add_image_path(io, [DEFAULT_IMAGE], "image file(s), folder(s) (searched recursively) or glob(s) "
                           f"(default: {DEFAULT_IMAGE} in the working directory)")
    io.add_argument("--output_path", default=None, help="output file, for a single input image")
    io.add_argument("--format", choices=FORMATS, default="pt", help="feature file format (default: pt; official: "
                    "exactly what the official lift_extractor.py writes, a [1, T', C] tensor via torch.save, .pth)")
    io.add_argument("--save_vis", action="store_true",
                    help="also write <name>_vis.png: the image, PCA pictures of the backbone and the output features")
    io.add_argument("--overwrite", action="store_true", help="overwrite existing output files (default: skip them, "
                    "so an interrupted run resumes)")
    io.add_argument("--save_dtype", choices=tuple(SAVE_DTYPES), default="float32",
                    help="dtype of the saved features (default float32; float16/bfloat16 halve the size)")
    io.add_argument("--shard_size", type=int, default=0, metavar="N",
                    help="write one sharded store into --output_dir (safetensors shards of N images + index.json, "
                    "read with liftkit.io.feature_store.FeatureStore) instead of one file per image (default 0: "
                    "files)")
    io.add_argument("--manifest", default="auto", metavar="auto|none|FILE",
                    help="JSON-lines record of every image (file, output, grid, status, error); auto: "
                    "<output_dir>/manifest.jsonl unless --output_path is given")
    io.add_argument("--limit", type=int, default=0, help="only the first N images of the sorted list (0: all)")
    options.add_output_args(p, "output", "output folder (default: output/); the input's relative path is kept, the "
                            "extension becomes the format's", json_help=None)
    options.add_backbone_args(p)
    options.add_lift_args(p)
    m = p.add_argument_group("method")
    m.add_argument("--lift_iter", type=int, default=1, help="LiFT applications (each doubles the grid; default 1)")
    m.add_argument("--no_lift", action="store_true", help="save the backbone's own grid (no LiFT)")
    m.add_argument("--upsample", choices=("bilinear", "nearest", "jbu"), default=None,
                   help="baseline instead of LiFT: upsample the backbone grid by 2^lift_iter (jbu: joint bilateral, "
                        "guided by the image; sigmas --jbu_sigma_spatial, --jbu_sigma_range)")
    options.add_size_args(p, 224, ("short", "square"), "short side the image is resized to before rounding to patch "
                          "multiples (0: keep size; default 224)")
    options.add_protocol_arg(p.add_argument_group("protocol"), "the official preprocessing (PIL image without EXIF "
                             "rotation, short side to --load_size with torchvision's Resize(LANCZOS), the official "
                             "normalisation per model, right/bottom remainder cropped to patch multiples)")
    options.add_runtime_args(p)
    r = p.add_argument_group("limits")
    r.add_argument("--batch_size", type=int, default=1, help="images per forward pass (same-size images are batched)")
    r.add_argument("--num_workers", type=int, default=None,
                   help="image-reading processes per rank (0: read on the main thread; default: from the CPU count)")
    r.add_argument("--max_pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (w*h)")
    r.add_argument("--max_tokens", type=int, default=16384, help="refuse inputs whose patch grid is larger")
    return p


def _output_file(image: Path, root: Optional[Path], args, single: bool) -> Path:
    if single and args.output_path:
        return Path(args.output_path)
    return Path(args.output_dir) / _relative(image, root).with_suffix("." + SUFFIX.get(args.format, args.format))


def _check_args(args) -> None:
    if args.lift_iter < 1:
        raise ConfigError(f"--lift_iter {args.lift_iter}: must be at least 1")
    if args.batch_size < 1:
        raise ConfigError(f"--batch_size {args.batch_size}: must be at least 1")
    if args.load_size < 0:
        raise ConfigError(f"--load_size {args.load_size}: must be positive (or 0 to keep the image size)")
    if args.num_workers is not None and args.num_workers < 0:
        raise ConfigError(f"--num_workers {args.num_workers}: must be 0 or more")
    if args.shard_size < 0 or args.limit < 0:
        raise ConfigError("--shard_size and --limit must be 0 or more")
    if args.save_dtype == "bfloat16" and args.format == "npy" and not args.shard_size:
        raise ConfigError("--save_dtype bfloat16 cannot be written as --format npy (numpy has no bfloat16); "
                          "use --format pt or safetensors, or --save_dtype float16")
    if args.no_lift and args.upsample:
        raise ConfigError("--no_lift and --upsample exclude each other: pick one")


def output_method(args) -> Method:
    """The method whose features are saved: the backbone grid, a baseline, or LiFT (--lift_iter steps)."""
    if args.no_lift:
        return Method.parse("low")
    return Method.parse(f"{args.upsample or 'lift'}{args.lift_iter}")


def main(argv: Optional[List[str]] = None) -> int:
    return run_command(COMMAND, build_parser(), argv, _run)


def _run(args, run: Run) -> Optional[int]:
    _check_args(args)
    with options.torchrun_group(args, run.log) as ctx:
        return _extract(args, run, ctx)


def _extract(args, run: Run, ctx) -> Optional[int]:
    log = run.log
    method = output_method(args)
    use_lift = method.needs_lift
    ext = options.make_extractor(args, [method], use_lift=use_lift, instead="use --no_lift / --upsample bilinear")
    log.info(options.describe_extractor(ext))
    if use_lift:
        log.info(f"LiFT {ext.lift_path} (x{args.lift_iter})" + (
            f"; backbone taken from --model_type {ext.spec.name}" if "model_type" in ext.lift_meta.source else ""))
    images = list_images(args.image_path)
    if not images:
        raise ConfigError(f"--image_path {' '.join(args.image_path)}: no image found")
    if args.limit:
        images = images[:args.limit]
    if args.output_path and len(images) > 1:
        raise ConfigError("--output_path names one file but several images were given; use --output_dir")
    if args.output_path and args.shard_size:
        raise ConfigError("--shard_size writes a store into --output_dir; drop --output_path")
    if args.load_size:  # the smallest input these flags allow must fit: refuse up front (exit 2)
        side = options.min_input_side(args.load_size, ext.patch_size)
        options.check_memory(args, ext.spec, side, side, [Method.parse("low"), method], MEMORY_FLAGS,
                             min(args.batch_size, len(images)))

    # the inputs' common folder, symlinks kept (a folder of links mirrors the folder, not the links' targets)
    root = Path(os.path.commonpath([os.path.abspath(p.parent) for p in images])) if len(images) > 1 else None
    single = len(images) == 1
    label = "none" if args.no_lift else (args.upsample or "lift")
    base_meta = {**ext.describe(), "layout": "CHW", "method": label, "dtype": args.dtype,
                 "save_dtype": args.save_dtype, "lift_iter": str(0 if args.no_lift else args.lift_iter),
                 **provenance_strings(run.info)}
    if not use_lift:
        base_meta.update(lift_path="", lift_sha256="")
    plan = list(dict.fromkeys(["low", method.name]))  # one backbone pass gives both

    out_dir = Path(args.output_dir)
    store = store_done = None
    if args.shard_size:
        store_done = scan_store(out_dir)
        store = ShardWriter(out_dir, args.shard_size, rank=ctx.rank)
    jobs = [Job(i, p, None if store else _output_file(p, root, args, single), _store_key(p, root) if store else None)
            for i, p in enumerate(images)]
    if args.num_workers is None:
        args.num_workers = default_num_workers(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    mine = shard(jobs, ctx.rank, ctx.world)
    desc = "extract" if not ctx.enabled else f"extract (rank 0 of {ctx.world}; {len(mine)} of {len(jobs)} images)"
    start, stats = time.perf_counter(), {}
    records = extract_shard(ext, mine, args, plan, method.name, base_meta, ctx.is_main, store, store_done, desc,
                            stats)
    gathered = gather_objects((records, stats), ctx)  # every rank's records, on every rank
    elapsed = time.perf_counter() - start
    stats_all = [st for _, st in gathered]
    gathered = [rs for rs, _ in gathered]
    if not ctx.is_main:
        barrier(ctx)  # rank 0 writes the manifest and the index, reports, and exits 1 if an image failed
        return None  # (a non-zero rank exiting 1 would make torchrun stop rank 0 before its summary)
    position = {str(p): i for i, p in enumerate(images)}
    allrec = sorted((r for rs in gathered for r in rs), key=lambda r: position[r["file"]])
    manifest = _manifest_path(args)
    if manifest is not None:
        write_manifest(manifest, allrec)
    if store is not None:
        write_index(out_dir)
    barrier(ctx)
    counts = {s: sum(r["status"] == s for r in allrec) for s in ("ok", "skipped", "failed")}
    where = args.output_path if (args.output_path and single) else args.output_dir
    log.info(f"done: {counts['ok']} extracted, {counts['skipped']} skipped (exist; --overwrite to redo), "
             f"{counts['failed']} failed -> {where}" + (f" (manifest {manifest})" if manifest else "")
             + (f" over {ctx.world} processes" if ctx.enabled else ""))
    wait = sum(st.get("input_wait", 0.0) for st in stats_all) / max(1e-9, sum(st.get("loop", 0.0)
                                                                           for st in stats_all))
    log.info(f"extraction loop {elapsed:.2f} s: {counts['ok'] / max(elapsed, 1e-9):.2f} images/s; the model waited "
             f"for input {100 * wait:.0f} % of the loop (all ranks); --num_workers {args.num_workers}")
    failures = [r["error"] for r in allrec if r["status"] == "failed"]
    if failures:
        raise ItemFailures(f"{len(failures)} of {len(images)} image(s) failed", failures)
    return None


def _store_key(image: Path, root: Optional[Path]) -> str:
    return _relative(image, root).with_suffix("").as_posix()


def _relative(image: Path, root: Optional[Path]) -> Path:
    if root is None:
        return Path(image.name)
    return Path(os.path.abspath(image)).relative_to(root)


def _manifest_path(args) -> Optional[Path]:
    if args.manifest == "none" or (args.manifest == "auto" and args.output_path):
        return None
    return Path(args.output_dir) / "manifest.jsonl" if args.manifest == "auto" else Path(args.manifest)


def write_manifest(path: Path, records) -> Path:
    """JSON lines, one per image in input order: file, output, grid, status (ok|skipped|failed), error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps({k: r[k] for k in MANIFEST_FIELDS}) + "\n")
    os.replace(tmp, path)
    return path
