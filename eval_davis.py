#!/usr/bin/env python
"""DAVIS-2017 semi-supervised video object segmentation by label propagation, scored with J&F.

    python eval_davis.py --data_path DAVIS --output_dir out/davis --methods low,bilinear,lift --offline
    python eval_davis.py --data_path DAVIS --output_dir out/davis --methods lift --square_resize 224
    python eval_davis.py --data_path DAVIS --evaluate_only out/davis/lift          # score masks already written

For every method (a way to get dense features, see ``extractor.METHODS``) and sequence, frame 0's mask is
propagated through the video (``liftkit.eval.label_propagation``: DINO's protocol, frame 0 + the ``n_last_frames``
previous frames as context, ``topk`` neighbours in a ``size_mask_neighborhood`` window, ``temperature``) and written
as palette PNGs to a fresh ``<output_dir>/<method>/<seq>/<frame>.png`` (an existing folder is refused unless
``--overwrite``, which deletes it). The masks are then scored with the official semi-supervised J&F
(``liftkit.eval.davis_metrics``). stdout: a table of global figures per method and J&F per sequence;
``--output_json``: everything per method, sequence and object, with the time per frame.

Frame size: DINO's 480p protocol by default (aspect kept, short side 480, both sides rounded to multiples of the
patch size: 476x854 for p=14, 480x856 for p=8); ``--square_resize N`` gives the official LiFT square N x N input.
The window radius counts feature cells (official: 12 cells on every grid); ``--neighborhood_scaling grid`` scales it
with the method's grid (x2 for lift/bilinear/highres, x4 for lift2) so it covers the same pixels as on the backbone
grid.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from extractor import DTYPES, ViTExtractor, available_backbones, parse_method
from liftkit.backbones.specs import DEFAULT_BACKBONE
from liftkit.data.davis import DavisSequence, load_davis, write_label_png
from liftkit.device import resolve_device
from liftkit.errors import ConfigError, LiftKitError, failure_report
from liftkit.eval.davis_metrics import STAT_KEYS, evaluate_results_dir
from liftkit.eval.label_propagation import PropagationConfig, iter_propagate_labels

MARKER = "eval_davis_run.json"  # written in every method folder; --overwrite only deletes folders that have it


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data / output")
    d.add_argument("--data_path", required=True, help="DAVIS root (JPEGImages/, Annotations/, ImageSets/)")
    d.add_argument("--set", dest="set_name", default="val", help="ImageSets/2017/<set>.txt (default: val)")
    d.add_argument("--sequences", nargs="+", default=None, help="subset of the set (names, space or comma separated)")
    d.add_argument("--resolution", default="480p", help="DAVIS resolution folder (default: 480p)")
    d.add_argument("--max_frames", type=int, default=None,
                   help="propagate and score only the first N frames of each sequence (quick checks; N >= 3)")
    d.add_argument("--output_dir", default=None, help="masks go to <output_dir>/<method>/<seq>/*.png")
    d.add_argument("--overwrite", action="store_true",
                   help="delete an existing <output_dir>/<method> written by this script (default: refuse)")
    d.add_argument("--evaluate_only", default=None, metavar="RESULTS_DIR",
                   help="only score masks already in RESULTS_DIR/<seq>/*.png (no model is loaded)")
    d.add_argument("--output_json", default=None, help="write all figures (per method, sequence, object) here")
    m = p.add_argument_group("model")
    m.add_argument("--model_type", default=DEFAULT_BACKBONE, help=f"backbone: {', '.join(available_backbones())}")
    m.add_argument("--backbone_weights", default=None, help="explicit backbone weight file (.pth/.safetensors)")
    m.add_argument("--offline", action="store_true", help="never download weights")
    m.add_argument("--layer", type=int, default=-1, help="block index, 0-based; -1 = last (default)")
    m.add_argument("--facet", default="key", choices=("key", "query", "value", "token"))
    m.add_argument("--channel_order", default="dim_major", choices=("dim_major", "head_major"))
    m.add_argument("--lift_path", default="auto",
                   help="LiFT file for the lift* methods (default: the shipped pretrained/lift_<model>.safetensors); "
                        "'none' to load none")
    m.add_argument("--methods", default="low,bilinear,lift",
                   help="comma-separated: low, bilinear, nearest, highres, lift, liftK (default: low,bilinear,lift)")
    g = p.add_argument_group("label propagation (DINO defaults)")
    g.add_argument("--n_last_frames", type=int, default=7, help="previous frames used as context, besides frame 0")
    g.add_argument("--size_mask_neighborhood", type=int, default=12,
                   help="window radius in feature cells (0: no restriction)")
    g.add_argument("--neighborhood_scaling", choices=("cells", "grid"), default="cells",
                   help="cells: the radius stays N cells on every grid (official); grid: N cells of the backbone "
                        "grid, i.e. x2 on a 2x grid")
    g.add_argument("--topk", type=int, default=5)
    g.add_argument("--temperature", type=float, default=0.1)
    s = p.add_argument_group("frame size")
    s.add_argument("--short_side", type=int, default=480,
                   help="aspect-preserving resize to this short side, sides rounded to patch multiples (default 480)")
    s.add_argument("--square_resize", type=int, default=None, metavar="N",
                   help="resize frames to N x N instead (official LiFT protocol)")
    r = p.add_argument_group("runtime")
    r.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    r.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _split(values: Optional[Sequence[str]]) -> List[str]:
    return [v for item in (values or []) for v in item.split(",") if v]


def _check_args(args) -> List[str]:
    """Validate the flags; returns the method list."""
    methods = _split([args.methods])
    if not methods:
        raise ConfigError("--methods is empty; give e.g. low,bilinear,lift")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"--methods {args.methods}: a method is listed twice")
    for method in methods:
        parse_method(method)
    if args.evaluate_only is None and args.output_dir is None:
        raise ConfigError("--output_dir is required (or --evaluate_only RESULTS_DIR to score existing masks)")
    if args.max_frames is not None and args.max_frames < 3:
        raise ConfigError(f"--max_frames {args.max_frames}: at least 3 (the first and last frames are not scored)")
    for flag in ("n_last_frames", "size_mask_neighborhood"):
        if getattr(args, flag) < 0:
            raise ConfigError(f"--{flag} {getattr(args, flag)}: must be >= 0")
    if args.topk < 1:
        raise ConfigError(f"--topk {args.topk}: must be at least 1")
    if args.temperature <= 0:
        raise ConfigError(f"--temperature {args.temperature}: must be > 0")
    if args.short_side < 1 or (args.square_resize is not None and args.square_resize < 1):
        raise ConfigError("--short_side / --square_resize must be positive")
    return methods


def _fresh_dir(path: Path, overwrite: bool, check_only: bool = False) -> None:
    """Make ``path`` an empty folder: refuse existing content unless ``overwrite`` and it is one of our runs.

    ``check_only``: raise the same errors but change nothing (to fail before the model is loaded).
    """
    if path.exists() and not path.is_dir():
        raise ConfigError(f"'{path}' is a file; choose another --output_dir")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise ConfigError(f"'{path}' already holds results; pass --overwrite to replace them or choose another "
                              "--output_dir (stale masks are never reused)")
        if not (path / MARKER).is_file():
            raise ConfigError(f"'{path}' is not empty and was not written by eval_davis.py (no {MARKER}); "
                              "refusing to delete it: choose another --output_dir")
        if not check_only:
            shutil.rmtree(path)
    if not check_only:
        path.mkdir(parents=True, exist_ok=True)


def _frame_size(ext: ViTExtractor, seq: DavisSequence, args) -> tuple:
    h0, w0 = seq.size_hw
    if args.square_resize:
        return ext.target_size((w0, h0), args.square_resize, "square")
    return ext.target_size((w0, h0), args.short_side, "short")


def _run_sequence(ext: ViTExtractor, seq: DavisSequence, method: str, out_dir: Path, args, cfg: PropagationConfig,
                  quiet: bool) -> dict:
    """Propagate, write the masks, and time it. Returns {"n_frames", "time_per_frame_s", "input_size", "grid"}."""
    size = _frame_size(ext, seq, args)
    n = seq.n_frames if args.max_frames is None else min(args.max_frames, seq.n_frames)
    grid = {}

    def features(t: int) -> torch.Tensor:
        x = ext.preprocess(seq.load_frame(t), size=size)
        f = ext.dense_features(x, method)[0]  # (C, h', w')
        grid["hw"] = tuple(f.shape[-2:])
        return f

    seq_dir = out_dir / seq.name
    seq_dir.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    start = time.perf_counter()
    maps = iter_propagate_labels(features, seq.first_mask(), n_frames=n, frame_hw=size, output_hw=seq.size_hw,
                                 config=cfg)
    for t, labels in enumerate(tqdm(maps, total=n, desc=f"{method} {seq.name}", unit="frame", disable=quiet,
                                    file=sys.stderr, leave=False)):
        write_label_png(seq_dir / f"{seq.frame_names[t]}.png", labels)
    elapsed = time.perf_counter() - start
    return {"n_frames": n, "time_per_frame_s": elapsed / n, "input_size": list(size), "grid": list(grid["hw"])}


def _print_tables(results: Dict[str, dict]) -> None:
    cols = ("J&F-Mean",) + STAT_KEYS
    head = f"{'method':<12}" + "".join(f"{c:>10}" for c in cols) + f"{'s/frame':>10}"
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        tpf = r.get("time_per_frame_s")
        print(f"{name:<12}" + "".join(f"{r['global'][c]:>10.4f}" for c in cols)
              + (f"{tpf:>10.3f}" if tpf is not None else f"{'-':>10}"))
    seqs = sorted({s for r in results.values() for s in r["per_sequence"]})
    if seqs:
        print()
        print(f"{'J&F-Mean':<20}" + "".join(f"{name:>12}" for name in results))
        for s in seqs:
            cells = [r["per_sequence"].get(s, {}).get("J&F-Mean") for r in results.values()]
            print(f"{s:<20}" + "".join(f"{c:>12.4f}" if c is not None else f"{'failed':>12}" for c in cells))


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    log = lambda msg: print(f"[eval_davis] {msg}", file=sys.stderr)  # noqa: E731
    failures: Dict[str, str] = {}
    results: Dict[str, dict] = {}
    report: dict = {"args": vars(args)}
    try:
        methods = _check_args(args)
        sequences = _split(args.sequences) or None
        if args.evaluate_only is not None:
            log("args: " + json.dumps(vars(args), sort_keys=True))
            res = evaluate_results_dir(args.data_path, args.evaluate_only, args.set_name, sequences,
                                       args.resolution, skip_failed=True, progress=not args.quiet,
                                       max_frames=args.max_frames)
            failures.update({f"{args.evaluate_only}/{k}": v for k, v in res.pop("failures").items()})
            results[Path(args.evaluate_only).name or "results"] = res
        else:
            device = str(resolve_device(args.device))
            log("args: " + json.dumps({**vars(args), "device": device}, sort_keys=True))
            seqs = load_davis(args.data_path, args.set_name, sequences, args.resolution)
            out_root = Path(args.output_dir)
            for method in methods:  # before loading the model: fail early on stale results
                _fresh_dir(out_root / method, args.overwrite, check_only=True)
            ext = ViTExtractor(
                model_type=args.model_type, layer=args.layer, facet=args.facet, channel_order=args.channel_order,
                backbone_weights=args.backbone_weights, offline=args.offline,
                lift_path=None if str(args.lift_path).lower() == "none" else args.lift_path,
                device=device, dtype=args.dtype,
            )
            if any(parse_method(m)[0] == "lift" for m in methods) and ext.lift is None:
                raise ConfigError(f"--methods {args.methods} needs a LiFT for {args.model_type}: none is shipped in "
                                  "pretrained/; pass --lift_path FILE or drop the lift methods")
            log(f"backbone {ext.spec.name} weights={ext.info.weights_path or 'random'} layer={ext.layer} "
                f"facet={ext.facet} p={ext.patch_size} lift={ext.lift_path or 'none'}; {len(seqs)} sequence(s)")
            report["extractor"] = ext.describe()
            for method in methods:
                kind, k = parse_method(method)
                scale = 1.0 if (kind == "low" or args.neighborhood_scaling == "cells") else float(2 ** k)
                cfg = PropagationConfig(n_last_frames=args.n_last_frames,
                                        size_mask_neighborhood=args.size_mask_neighborhood,
                                        neighborhood_scale=scale, topk=args.topk, temperature=args.temperature)
                method_dir = out_root / method
                _fresh_dir(method_dir, args.overwrite)
                (method_dir / MARKER).write_text(json.dumps({"method": method, "args": vars(args),
                                                             "extractor": ext.describe()}, indent=1))
                runs: Dict[str, dict] = {}
                for seq in seqs:
                    try:
                        runs[seq.name] = _run_sequence(ext, seq, method, method_dir, args, cfg, args.quiet)
                    except LiftKitError as exc:
                        failures[f"{method}/{seq.name}"] = str(exc)
                done = [s for s in (seq.name for seq in seqs) if s in runs]
                if not done:
                    continue
                res = evaluate_results_dir(args.data_path, method_dir, args.set_name, done, args.resolution,
                                           skip_failed=True, max_frames=args.max_frames)
                failures.update({f"{method}/{k}": v for k, v in res.pop("failures").items()})
                for name, seq_res in res["per_sequence"].items():
                    seq_res.update(runs[name])
                n_total = sum(r["n_frames"] for r in runs.values())
                res["time_per_frame_s"] = sum(r["time_per_frame_s"] * r["n_frames"] for r in runs.values()) / n_total
                res.update(results_dir=str(method_dir), window_radius_cells=cfg.radius)
                results[method] = res
    except LiftKitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    if results:
        _print_tables(results)
    report.update(methods=results, failures=failures)
    if args.output_json:
        path = Path(args.output_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_json_safe(report), indent=1))
        log(f"wrote {path}")
    if failures:
        print(failure_report(f"{len(failures)} sequence run(s) failed",
                             [f"{key}: {msg}" for key, msg in failures.items()]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
