#!/usr/bin/env python
"""Benchmark LiFT training: what a step costs next to the frozen backbone, and what the feature cache saves.

    python bench/bench_train.py                                   # dinov2_vits14_imgfocus, S=448, batch 8, 32 images
    python bench/bench_train.py --threads 1 --images 32 --json /tmp/bench_train.json

Measured in one run, on the same images (median of --reps timed repetitions after one warm-up):
  * backbone passes alone: the three frozen passes a live step needs (S, S/2, S/4), and the S + S/2 pair alone;
  * a live training step: those passes + LiFT forward/backward on both pairs + Adam (``make_targets`` +
    ``pair_losses``, exactly what the trainer runs), and its ratio to the backbone passes;
  * a cached training step: LiFT forward/backward + Adam on targets read from a feature cache;
  * whole epochs through ``train_lift.main`` on --images images: without the cache, and with it (first epoch =
    building the cache + training, later epochs = cached), and the ratio of a no-cache epoch to a cached one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from extractor import ViTExtractor  # noqa: E402
from liftkit.lift.model import LiFT  # noqa: E402
from liftkit.train.data import ImageFolderData, find_images  # noqa: E402
from liftkit.train.feature_cache import FeatureCache  # noqa: E402
from liftkit.train.objective import LiftPairs, make_targets, pair_losses  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "imagenet-sample-images"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", default=str(DEFAULT_DATA))
    p.add_argument("--model_type", default="dinov2_vits14_imgfocus")
    p.add_argument("--random_init", action="store_true")
    p.add_argument("--imsize", type=int, default=448)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--images", type=int, default=32, help="images per epoch for the epoch timings")
    p.add_argument("--epochs", type=int, default=2, help="epochs per epoch-timing run (>= 2 to see a cached epoch)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip_epochs", action="store_true", help="micro-benchmarks only")
    p.add_argument("--json", default=None, help="also write the figures here")
    return p


def timed(fn: Callable[[], None], reps: int, sync: Callable[[], None]) -> float:
    fn()
    sync()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def micro(args, ext: ViTExtractor, images: torch.Tensor) -> Dict[str, float]:
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    b = images.shape[0]
    s = args.imsize
    x2 = torch.nn.functional.interpolate(images, size=(s // 2, s // 2), mode="bilinear", antialias=True)
    x4 = torch.nn.functional.interpolate(images, size=(s // 4, s // 4), mode="bilinear", antialias=True)
    t_full = timed(lambda: ext.extract_descriptors(images), args.reps, sync)
    t_half = timed(lambda: ext.extract_descriptors(x2), args.reps, sync)
    t_quarter = timed(lambda: ext.extract_descriptors(x4), args.reps, sync)

    torch.manual_seed(0)
    model = LiftPairs(LiFT(ext.embed_dim, ext.patch_size)).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def live_step():
        t = make_targets(ext.extract_descriptors, images)
        loss, _ = pair_losses(model, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t_live = timed(live_step, args.reps, sync)

    # the cached step reads its targets from a real FeatureCache (float16 memory maps)
    targets = make_targets(ext.extract_descriptors, images)
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(Path(tmp), {"bench": True}, "bench", b, ext.embed_dim, ext.patch_size, s)
        cache.create()
        cache.open(writable=True)
        cache.write(list(range(b)), targets)
        cache.open(writable=False)

        def cached_step():
            t = cache.gather(list(reversed(range(b))), dev)
            loss, _ = pair_losses(model, t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t_cached = timed(cached_step, args.reps, sync)
    three = t_full + t_half + t_quarter
    return {
        "batch": b,
        "backbone_S_img_per_s": b / t_full, "backbone_S2_img_per_s": b / t_half, "backbone_S4_img_per_s": b / t_quarter,
        "backbone_3_passes_s_per_img": three / b, "backbone_S_plus_S2_s_per_img": (t_full + t_half) / b,
        "live_step_s_per_img": t_live / b, "live_step_img_per_s": b / t_live,
        "cached_step_s_per_img": t_cached / b, "cached_step_img_per_s": b / t_cached,
        "ratio_live_step_to_3_passes": t_live / three, "ratio_live_step_to_S_plus_S2": t_live / (t_full + t_half),
    }


def epochs(args) -> Dict[str, float]:
    from train_lift import main as train_main

    out: Dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        common = ["--data_root", args.data_root, "--model_type", args.model_type, "--imsize", str(args.imsize),
                  "--batch_size", str(args.batch_size), "--epochs", str(args.epochs), "--limit", str(args.images),
                  "--val_fraction", "0", "--num_workers", "0", "--no_progress", "--device", args.device,
                  "--save_every", "0"]
        if args.random_init:
            common.append("--random_init")
        if args.threads:
            common += ["--threads", str(args.threads)]
        for name, extra in (("nocache", []), ("cache", ["--cache_dir", f"{tmp}/cache"])):
            run = Path(tmp) / name
            if train_main(common + extra + ["--output_dir", str(run)]) != 0:
                raise SystemExit(f"the {name} training run failed")
            log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
            secs: List[float] = [e["seconds"] for e in log if e["event"] == "epoch"]
            build = sum(e["seconds"] for e in log if e["event"] == "cache_built")
            if name == "nocache":
                out["nocache_epoch_s"] = statistics.mean(secs)
            else:
                out["cache_build_s"] = build
                out["cache_first_epoch_s"] = build + secs[0]
                out["cache_later_epoch_s"] = statistics.mean(secs[1:]) if len(secs) > 1 else float("nan")
        out["images"] = args.images
        out["ratio_nocache_to_cached_epoch"] = out["nocache_epoch_s"] / out["cache_later_epoch_s"]
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"bench_train: {json.dumps(vars(args))}; torch threads {torch.get_num_threads()}", file=sys.stderr)
    ext = ViTExtractor(args.model_type, lift_path=None, random_init=args.random_init, device=args.device)
    paths = find_images(Path(args.data_root), limit=args.batch_size)
    ds = ImageFolderData(paths, args.imsize, ext.spec.mean, ext.spec.std, ext.patch_size)
    images = torch.stack([ds[(i, 0)]["image"] for i in range(len(ds))]).to(args.device)
    res = {"config": vars(args), "threads": torch.get_num_threads(), "micro": micro(args, ext, images)}
    if not args.skip_epochs:
        res["epochs"] = epochs(args)
    m = res["micro"]
    print(f"\nbackbone passes (batch {m['batch']}): S {m['backbone_S_img_per_s']:.2f} img/s, "
          f"S/2 {m['backbone_S2_img_per_s']:.2f} img/s, S/4 {m['backbone_S4_img_per_s']:.2f} img/s; "
          f"all three {m['backbone_3_passes_s_per_img']:.3f} s/img, "
          f"S + S/2 {m['backbone_S_plus_S2_s_per_img']:.3f} s/img")
    print(f"live training step: {m['live_step_s_per_img']:.3f} s/img ({m['live_step_img_per_s']:.2f} img/s) = "
          f"{m['ratio_live_step_to_3_passes']:.3f}x the three passes, {m['ratio_live_step_to_S_plus_S2']:.3f}x S + S/2")
    print(f"cached training step: {m['cached_step_s_per_img']:.4f} s/img ({m['cached_step_img_per_s']:.2f} img/s)")
    if "epochs" in res:
        e = res["epochs"]
        print(f"epoch of {e['images']} images: no cache {e['nocache_epoch_s']:.1f} s; "
              f"cache: first {e['cache_first_epoch_s']:.1f} s "
              f"(build {e['cache_build_s']:.1f} s), later {e['cache_later_epoch_s']:.2f} s -> "
              f"{e['ratio_nocache_to_cached_epoch']:.1f}x faster")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
