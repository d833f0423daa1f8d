"""DAVIS-2017 semi-supervised video object segmentation by label propagation, scored with J&F.

``liftkit-eval-davis`` (installed) or ``python eval_davis.py`` (checkout); the same flags.

    python eval_davis.py --data_root DAVIS --output_dir out/davis --methods low,bilinear,lift --offline
    python eval_davis.py --data_root DAVIS --output_dir out/davis --methods lift --load_size 224 --resize_mode square
    python eval_davis.py --data_root DAVIS --evaluate_only out/davis/lift          # score masks already written

For every method (a way to get dense features, see ``liftkit.methods``) and sequence, frame 0's mask is
propagated through the video (``liftkit.eval.label_propagation``: DINO's protocol, frame 0 + the ``n_last_frames``
previous frames as context, ``topk`` neighbours in a ``size_mask_neighborhood`` window, ``temperature``) and written
as palette PNGs to a fresh ``<output_dir>/<method>/<seq>/<frame>.png`` (an existing folder is refused unless
``--overwrite``, which deletes it). The masks are then scored with the official semi-supervised J&F
(``liftkit.eval.davis_metrics``). stdout: a table of global figures per method and J&F per sequence;
``--output_json``: everything per method, sequence and object, with the time per frame. All methods run side by
side over each sequence, so every frame costs one backbone pass for all of them (plus one per highres*).

Frame size: DINO's 480p protocol by default (``--load_size 480 --resize_mode short``: aspect kept, short side 480,
both sides rounded to multiples of the patch size: 476x854 for p=14, 480x856 for p=8); ``--resize_mode square``
(alias ``--square_resize N``) gives the official LiFT square N x N input; ``--short_side N`` is kept as an alias.
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
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from liftkit.cli import options
from liftkit.cli.runner import ItemFailures, Run, run_command, run_sweep
from liftkit.data.davis import DavisSequence, load_davis, write_label_png
from liftkit.errors import ConfigError, DatasetError, LiftKitError
from liftkit.io.outputs import os_error_message, write_text_atomic
from liftkit.eval.davis_metrics import STAT_KEYS, evaluate_results_dir
from liftkit.eval.label_propagation import PropagationConfig, iter_propagate_labels
from liftkit.extractor import ViTExtractor
from liftkit.methods import Method
from liftkit.data.loader import shard
from liftkit.train.distributed import DistContext, barrier, gather_objects

COMMAND = "eval_davis"
MEMORY_FLAGS = {"size": "--short_side / --square_resize (--load_size)", "lift_iter": "the K of liftK in --methods",
                "methods": "the K of liftK/bilinearK/highresK in --methods"}
MARKER = "eval_davis_run.json"  # written in every method folder; --overwrite only deletes folders that have it


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval_davis.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    options.add_data_root(d, help="DAVIS root (JPEGImages/, Annotations/, ImageSets/)")
    d.add_argument("--set", dest="set_name", default="val", help="ImageSets/2017/<set>.txt (default: val)")
    d.add_argument("--sequences", nargs="+", default=None, help="subset of the set (names, space or comma separated)")
    d.add_argument("--resolution", default="480p", help="DAVIS resolution folder (default: 480p)")
    d.add_argument("--max_frames", type=int, default=None,
                   help="propagate and score only the first N frames of each sequence (quick checks; N >= 3)")
    options.add_skip_bad(d)
    options.add_output_args(p, None, "masks go to <output_dir>/<method>/<seq>/*.png",
                            "write all figures (per method, sequence, object) here")
    o = p.add_argument_group("output")
    o.add_argument("--overwrite", action="store_true",
                   help="delete an existing <output_dir>/<method> written by this script (default: refuse)")
    o.add_argument("--evaluate_only", default=None, metavar="RESULTS_DIR",
                   help="only score masks already in RESULTS_DIR/<seq>/*.png (no model is loaded)")
    options.add_backbone_args(p)
    options.add_lift_args(p, "low,bilinear,lift")
    g = p.add_argument_group("label propagation (DINO defaults)")
    g.add_argument("--n_last_frames", type=int, default=7, help="previous frames used as context, besides frame 0")
    g.add_argument("--size_mask_neighborhood", type=int, default=12,
                   help="window radius in feature cells (0: no restriction)")
    g.add_argument("--neighborhood_scaling", choices=("cells", "grid"), default="cells",
                   help="cells: the radius stays N cells on every grid (official); grid: N cells of the backbone "
                        "grid, i.e. x2 on a 2x grid")
    g.add_argument("--topk", type=int, default=5)
    g.add_argument("--temperature", type=float, default=0.1)
    g.add_argument("--label_upsample", choices=("frame", "patch"), default="frame",
                   help="soft labels before the argmax: frame: upsampled to the input frame (default); patch: by the "
                        "patch size whatever the grid (official: twice the frame size on a LiFT grid)")
    options.add_size_args(p, 480, ("short", "square"), imsize_square=True, help="frame size: short side (short) or square side (square), "
                          "sides rounded to patch multiples (default 480)", davis_aliases=True, sweep=True)
    options.add_protocol_arg(p.add_argument_group("protocol"), "the official eval_davis.py: 224 x 224 frames "
                             "(--imsize 224), the official normalisation, --label_upsample patch, a 12-cell window on "
                             "every grid, only the LiFT features with --lift_path (--methods lift), else only the "
                             "backbone's (--lift_path none --methods low)")
    options.add_runtime_args(p)
    return p


def official_settings(args) -> dict:
    """``--protocol official``: the official eval_davis.py settings where ours differ (docs/reproducing.md)."""
    return {"load_size": 224, "resize_mode": "square", "label_upsample": "patch", "neighborhood_scaling": "cells",
            **options.official_methods(args)}


def _split(values: Optional[Sequence[str]]) -> List[str]:
    return [v for item in (values or []) for v in item.split(",") if v]


def _check_args(args) -> Sequence[Method]:
    """Validate the flags; returns the method plan."""
    plan = options.methods_plan(args.methods)
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
    if args.load_size is None or args.load_size < 1:
        raise ConfigError(f"--load_size {args.load_size}: must be positive")
    return plan


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
    return ext.target_size((w0, h0), args.load_size, args.resize_mode)


def _run_sequence(ext: ViTExtractor, seq: DavisSequence, plan: Sequence[Method], out_dirs: Dict[str, Path], args,
                  cfgs: Dict[str, PropagationConfig], quiet: bool) -> Dict[str, dict]:
    """Propagate every method side by side through one sequence (one backbone pass per frame for all of them), write
    the masks, and time each. Returns method -> {"n_frames", "time_per_frame_s", "input_size", "grid"}; a method's
    time is its propagation and writing plus what its features cost alone (the shared backbone pass included)."""
    size = _frame_size(ext, seq, args)
    n = seq.n_frames if args.max_frames is None else min(args.max_frames, seq.n_frames)
    frame = {"t": None, "feats": {}, "charged": 0.0}
    own = {m.name: 0.0 for m in plan}

    def features_of(name: str):
        def features(t: int) -> torch.Tensor:
            if frame["t"] != t:
                start, timings = time.perf_counter(), {}
                x = ext.preprocess(seq.load_frame(t), size=size)
                frame["feats"] = {k: v[0] for k, v in ext.features(x, plan, timings=timings).items()}  # (C, h', w')
                frame["t"] = t
                frame["charged"] += time.perf_counter() - start
                for k, sec in timings.items():
                    own[k] += sec
            return frame["feats"][name]
        return features

    gens = {m.name: iter_propagate_labels(features_of(m.name), seq.first_mask(), n_frames=n, frame_hw=size,
                                          output_hw=seq.size_hw, config=cfgs[m.name]) for m in plan}
    spent = {m.name: 0.0 for m in plan}
    for name in gens:
        (out_dirs[name] / seq.name).mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    for t in tqdm(range(n), desc=seq.name, unit="frame", disable=quiet, file=sys.stderr, leave=False):
        for name, gen in gens.items():
            frame["charged"], start = 0.0, time.perf_counter()
            labels = next(gen)
            write_label_png(out_dirs[name] / seq.name / f"{seq.frame_names[t]}.png", labels)
            spent[name] += time.perf_counter() - start - frame["charged"]
    return {name: {"n_frames": n, "time_per_frame_s": (spent[name] + own[name]) / n, "input_size": list(size),
                   "grid": list(frame["feats"][name].shape[-2:])} for name in gens}


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
    return run_command(COMMAND, build_parser(), argv, lambda args, run: run_sweep(
        options.with_protocol(args, official_settings, run), run, _run, lambda res: {m: r["global"]["J&F-Mean"] for m, r in res.items()}, "J&F-Mean"))


def _run(args, run: Run) -> Optional[int]:
    """Under torchrun each rank propagates its share of the sequences (rank r: sequences r, r + N, ...) into the
    shared output folder; rank 0 gathers the runs and scores every sequence as one process would."""
    with options.torchrun_group(args, run.log) as ctx:
        return _evaluate(args, run, ctx)


def _evaluate(args, run: Run, ctx: DistContext) -> Optional[int]:
    log = run.log
    failures: Dict[str, str] = {}
    skipped: List[Tuple[str, str]] = []
    results: Dict[str, dict] = {}
    report: dict = {"run": run.info, "args": run.info["args"]}
    plan = _check_args(args)
    sequences = _split(args.sequences) or None
    if args.evaluate_only is not None and not ctx.is_main:
        return None  # scoring existing masks: rank 0 alone
    if args.evaluate_only is not None:
        res = evaluate_results_dir(args.data_root, args.evaluate_only, args.set_name, sequences,
                                   args.resolution, skip_failed=True, progress=not args.quiet,
                                   max_frames=args.max_frames)
        failures.update({f"{args.evaluate_only}/{k}": v for k, v in res.pop("failures").items()})
        results[Path(args.evaluate_only).name or "results"] = res
    else:
        results = _propagate_and_score(args, run, plan, sequences, report, failures, ctx, skipped)
        if not ctx.is_main:
            return None
    if results:
        _print_tables(results)
    report.update(methods=results, failures=failures, **options.skipped_json(skipped))
    if args.output_json:
        path = Path(args.output_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(_json_safe(report), indent=1))
        log.info(f"wrote {path}")
    if failures:
        raise ItemFailures(f"{len(failures)} sequence run(s) failed" + (f", {len(skipped)} skipped" if skipped else ""),
                           [f"{k}: {m}" for k, m in list(failures.items()) + skipped])
    if skipped:
        raise options.skipped_failures(skipped)
    return results


def _propagate_and_score(args, run: Run, plan: Sequence[Method], sequences, report: dict,
                         failures: Dict[str, str], ctx: DistContext = DistContext(),
                         skipped: Optional[List[Tuple[str, str]]] = None) -> Dict[str, dict]:
    skipped = [] if skipped is None else skipped
    seqs = load_davis(args.data_root, args.set_name, sequences, args.resolution,
                      skipped if args.skip_bad else None)
    if not seqs:
        raise DatasetError(f"no usable sequence in '{args.data_root}' ({len(skipped)} skipped)")
    out_root = Path(args.output_dir)
    for m in plan:  # before loading the model: fail early on stale results
        _fresh_dir(out_root / m.name, args.overwrite, check_only=True)
    barrier(ctx)  # every rank has checked before rank 0 clears the folders
    ext = options.make_extractor(args, plan)
    side = options.min_input_side(args.load_size, ext.patch_size)  # every frame is at least side x side
    options.check_memory(args, ext.spec, side, side, plan, MEMORY_FLAGS)
    run.log.info(f"{options.describe_extractor(ext)}; {len(seqs)} sequence(s)")
    report["extractor"] = ext.describe()
    cfgs, dirs = {}, {}
    for m in plan:
        scale = 1.0 if (m.kind == "low" or args.neighborhood_scaling == "cells") else float(m.scale)
        cfgs[m.name] = PropagationConfig(n_last_frames=args.n_last_frames,
                                         size_mask_neighborhood=args.size_mask_neighborhood,
                                         neighborhood_scale=scale, topk=args.topk, temperature=args.temperature,
                                         label_upsample=ext.patch_size if args.label_upsample == "patch" else None)
        dirs[m.name] = out_root / m.name
        if ctx.is_main:
            _fresh_dir(dirs[m.name], args.overwrite)
            write_text_atomic(dirs[m.name] / MARKER, json.dumps({"method": m.name, "run": run.info,
                                                           "extractor": ext.describe()}, indent=1))
    barrier(ctx)  # the folders exist before any rank writes masks
    runs: Dict[str, Dict[str, dict]] = {m.name: {} for m in plan}
    mine_failures: Dict[str, str] = {}
    for seq in shard(seqs, ctx.rank, ctx.world):
        try:
            for name, info in _run_sequence(ext, seq, plan, dirs, args, cfgs, args.quiet).items():
                runs[name][seq.name] = info
        except (LiftKitError, OSError) as exc:  # OSError: a mask that cannot be written
            exc = exc if isinstance(exc, LiftKitError) else os_error_message(exc.filename or out_root, exc)
            if args.skip_bad:
                skipped.append((seq.name, str(exc)))
            else:
                mine_failures.update({f"{m.name}/{seq.name}": str(exc) for m in plan})
    parts = gather_objects((runs, mine_failures), ctx)  # every rank's masks are written once this returns
    if not ctx.is_main:
        return {}
    for part_runs, _ in parts:
        for name, per_seq in part_runs.items():
            runs[name].update(per_seq)
    merged = {k: v for _, part in parts for k, v in part.items()}
    failures.update({k: merged[k] for seq in seqs for m in plan if (k := f"{m.name}/{seq.name}") in merged})
    results: Dict[str, dict] = {}
    for m in plan:
        done = [s.name for s in seqs if s.name in runs[m.name]]
        if not done:
            continue
        res = evaluate_results_dir(args.data_root, dirs[m.name], args.set_name, done, args.resolution,
                                   skip_failed=True, max_frames=args.max_frames)
        failures.update({f"{m.name}/{k}": v for k, v in res.pop("failures").items()})
        for name, seq_res in res["per_sequence"].items():
            seq_res.update(runs[m.name][name])
        n_total = sum(r["n_frames"] for r in runs[m.name].values())
        res["time_per_frame_s"] = sum(r["time_per_frame_s"] * r["n_frames"] for r in runs[m.name].values()) / n_total
        res.update(results_dir=str(dirs[m.name]), window_radius_cells=cfgs[m.name].radius)
        results[m.name] = res
    return results
