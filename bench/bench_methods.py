#!/usr/bin/env python
"""Wall time of eval_tokencut and eval_visualize_feats before and after the one-pass method plan, side by side.

"Before" is the scripts as they were at ``--baseline`` (default 45b1cc4, the last commit before issue 12: one
backbone pass per method), read with ``git show`` into a temporary folder and run against today's library (their
interface is kept); "after" is today's ``liftkit.cli`` command. Both run in this process on the same images with the
same flags, interleaved repetition by repetition (old, new, old, new, ...) so a load change on a shared machine hits
both alike; the medians and their ratio are printed. Model loading is included in both (the same cost).

    python bench/bench_methods.py --reps 3 --limit 4 --threads 1

Needs a git checkout (for the baseline) and ../shared/data/VOC2007 (for TokenCut).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

ROOT = Path(__file__).resolve().parents[1]
VOC07 = ROOT.parent / "shared" / "data" / "VOC2007" / "VOCdevkit" / "VOC2007"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default="45b1cc4", help="git revision of the 'before' scripts (default 45b1cc4)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--limit", type=int, default=4, help="VOC07 trainval images for TokenCut (default 4)")
    p.add_argument("--images", nargs="+", default=[str(ROOT / "assets")], help="images for eval_visualize_feats")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stable on a shared CPU)")
    p.add_argument("--only", choices=("tokencut", "visualize"), default=None)
    p.add_argument("--output_json", default=None)
    return p


def load_baseline(rev: str, script: str, folder: Path):
    """The module ``script`` as it was at ``rev`` (its imports resolve against today's checkout)."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{script}.py"], capture_output=True, text=True,
                         check=True).stdout
    path = folder / f"baseline_{script}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed_quiet(fn: Callable[[], int]) -> float:
    """Seconds of ``fn()`` with its stdout/stderr swallowed (a non-zero exit code is an error)."""
    sink = io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            rc = fn()
    except SystemExit as exc:  # argparse errors of a command
        rc = exc.code
    sec = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"benchmark run failed (exit {rc}):\n{sink.getvalue()[-3000:]}")
    return sec


def cases(args, tmp: Path) -> Dict[str, Dict[str, Callable[[], int]]]:
    sys.path.insert(0, str(ROOT))
    from liftkit.cli import eval_tokencut, visualize

    out: Dict[str, Dict[str, Callable[[], int]]] = {}
    if args.only in (None, "tokencut"):
        old = load_baseline(args.baseline, "eval_tokencut", tmp)
        tc = ["--dataset", "voc07", "--offline", "--methods", "low,bilinear,lift", "--tau", "0.9",
              "--limit", str(args.limit), "--device", "cpu"]
        out["eval_tokencut --methods low,bilinear,lift"] = {
            "before": lambda: old.main(tc + ["--dataroot", str(VOC07)]),
            "after": lambda: eval_tokencut.main(tc + ["--data_root", str(VOC07), "--quiet"]),
        }
    if args.only in (None, "visualize"):
        old_vis = load_baseline(args.baseline, "eval_visualize_feats", tmp)
        vis = ["--image_path", *args.images, "--offline", "--device", "cpu"]
        out["eval_visualize_feats (defaults)"] = {
            "before": lambda: old_vis.main(vis + ["--output_dir", str(tmp / "vis_before")]),
            "after": lambda: visualize.main(vis + ["--output_dir", str(tmp / "vis_after"), "--quiet"]),
        }
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, fns in cases(args, Path(tmp)).items():
            times: Dict[str, List[float]] = {"before": [], "after": []}
            for _ in range(args.reps):
                for which in ("before", "after"):
                    times[which].append(timed_quiet(fns[which]))
            before, after = statistics.median(times["before"]), statistics.median(times["after"])
            rows.append({"case": name, "before_s": before, "after_s": after, "ratio": after / before,
                         "all_before_s": times["before"], "all_after_s": times["after"]})
            print(f"{name:<45} before {before:7.2f} s   after {after:7.2f} s   after/before {after / before:.2f}x",
                  flush=True)
    if args.output_json:
        Path(args.output_json).write_text(json.dumps({"args": vars(args), "torch_threads": args.threads,
                                                      "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
