"""lift_extractor at scale: images/s with ``--num_workers 0`` vs the default, 1 vs 2 torchrun processes, peak memory.

Every case runs the real command in a subprocess on the same images, interleaved repetition by repetition (a load
change on a shared machine hits all cases alike); images/s is read from the command's own ``extraction loop`` line
(the loop over the images, model loading excluded), peak memory is the largest process's maximum RSS
(``getrusage(RUSAGE_CHILDREN)``, per case in its own runner process). Memory flatness: each case also runs on the
first half of the images; the peak must not grow with the number of images.

    OMP_NUM_THREADS=1 python bench/bench_extract_scale.py --images /work/shared/data/imagenet-sample-images \\
        --limit 120 --reps 2
    # on a GPU machine, the same command with --device cuda reports the share of time the model waits for input
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
LOOP = re.compile(r"extraction loop ([\d.]+) s: ([\d.]+) images/s; the model waited for input (\d+) %")


def _case_cmd(name: str, nproc: int) -> list:
    if nproc == 1:
        return [sys.executable, str(ROOT / "lift_extractor.py")]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            str(ROOT / "lift_extractor.py")]


def _measure(cmd: list, env: dict) -> dict:
    """Run ``cmd`` in a fresh runner process so that RUSAGE_CHILDREN is this case's alone."""
    code = ("import json, resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
            "print(json.dumps({'rc': r.returncode, 'err': r.stderr[-4000:], "
            "'maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    out = subprocess.run([sys.executable, "-c", code] + cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    res = json.loads(out.stdout)
    m = LOOP.search(res["err"])
    if res["rc"] != 0 or not m:
        raise SystemExit(f"case failed (exit {res['rc']}): {' '.join(cmd)}\n{res['err']}")
    return {"loop_s": float(m.group(1)), "img_s": float(m.group(2)), "wait_pct": int(m.group(3)),
            "peak_mb": res["maxrss_kb"] / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "imagenet-sample-images"))
    p.add_argument("--limit", type=int, default=120, help="first N images of the folder")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", nargs="*", default=["--model_type", "timm:vit_tiny_patch16_224", "--random_init",
                                                   "--no_lift"],
                   help="model flags (default: a random ViT-Ti/16, no LiFT; e.g. '--model_type "
                   "dinov2_vits14_imgfocus' for the real offline backbone with the shipped LiFT)")
    p.add_argument("--extra", nargs="*", default=["--load_size", "224", "--format", "safetensors",
                                                  "--save_dtype", "float16"])
    args = p.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cases = {"1 process, --num_workers 0": (1, ["--num_workers", "0"]),
             "1 process, default workers": (1, []),
             "torchrun 2 processes (gloo), default workers": (2, [])}
    results = {c: [] for c in cases}
    half = {c: [] for c in cases}
    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    try:
        for rep in range(args.reps):
            for case, (nproc, flags) in cases.items():
                for limit, bucket in ((args.limit, results), (args.limit // 2, half)):
                    if bucket is half and rep > 0:
                        continue
                    out = tmp / f"out_{rep}_{nproc}_{len(flags)}_{limit}"
                    cmd = _case_cmd(case, nproc) + ["--image_path", args.images, "--limit", str(limit),
                                                    "--output_dir", str(out), "--device", args.device, "--quiet"]
                    r = _measure(cmd + args.model + args.extra + flags, env)
                    bucket[case].append(r)
                    shutil.rmtree(out, ignore_errors=True)
                    print(f"rep {rep} {case} ({limit} images): {r}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = median(r["img_s"] for r in results["1 process, --num_workers 0"])
    print(f"\n{args.limit} images, {' '.join(args.model + args.extra)}, device {args.device}, median of {args.reps}")
    print("| case | images/s | vs --num_workers 0 | model waits for input | peak RSS (MB), "
          f"{args.limit // 2} -> {args.limit} images |")
    print("|---|---|---|---|---|")
    for case in cases:
        rs = results[case]
        rate = median(r["img_s"] for r in rs)
        print(f"| {case} | {rate:.2f} | {rate / base:.2f}x | {median(r['wait_pct'] for r in rs):.0f} % | "
              f"{half[case][0]['peak_mb']:.0f} -> {max(r['peak_mb'] for r in rs):.0f} |")


if __name__ == "__main__":
    main()
