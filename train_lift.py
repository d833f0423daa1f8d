#!/usr/bin/env python
"""Train a LiFT module for any backbone on any folder of images (resumable, multi-GPU).

    python train_lift.py --data_root /data/imagenet-sample-images --cache_dir .cache/lift_targets --epochs 20
    python train_lift.py --data_root photos/ --model_type dino_vits16 --augment --hflip --output_dir runs/dino16
    python train_lift.py --data_root photos/ --output_dir runs/dino16 --resume          # continue after a crash
    torchrun --nproc_per_node 4 train_lift.py --data_root /data/imagenet/train --batch_size 256 --amp bf16

Objective (the paper's): with --imsize S the frozen backbone gives features of the image at S, S/2 and S/4; LiFT on
the S/2 features (and the S/2 image) must reconstruct the S features, and LiFT on S/4 those at S/2. Images are
resized so the short side is S and centre-cropped to S x S (--resize squash: resized to S x S as the official
script does); the S/2 and S/4 images are made by anti-aliased resizing (--downsample strided: the official aliased
x[..., ::2, ::2]). --residual trains the residual variant (a correction to bilinear
upsampling). Every epoch ends with a validation line: the mean cosine similarity to the backbone's features of
the 2x-larger input, for LiFT, bilinear and nearest upsampling.

Outputs in --output_dir: lift_<model_type>.safetensors (final; its metadata names the backbone, weights digest,
layer, facet and channel order, so lift_extractor.py refuses it elsewhere), lift_<model_type>_epochNNN.safetensors
(after each epoch), checkpoints/step_*.pt (training state for --resume), log.jsonl (arguments, step losses,
validation). See docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from typing import List, Optional

import torch

from extractor import ViTExtractor, available_backbones
from liftkit.backbones.specs import DEFAULT_BACKBONE
from liftkit.errors import LiftKitError
from liftkit.lift.model import ARCHS, ATTEND_PRIORS, HEADS
from liftkit.train.data import DOWNSAMPLE_MODES, RESIZE_POLICIES
from liftkit.train.loop import AMP_MODES, TrainConfig, Trainer
from liftkit.train.objective import LOSSES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data_root", "--dataroot", dest="data_root", required=True,
                   help="folder of training images, searched recursively (ImageNet train/<wnid>/ or flat)")
    d.add_argument("--val_root", default=None, help="separate folder of validation images (overrides --val_fraction)")
    d.add_argument("--val_fraction", type=float, default=0.05,
                   help="fraction of --data_root held out for validation, chosen by --seed (default 0.05)")
    d.add_argument("--limit", type=int, default=None, help="use at most this many images (spread over the listing)")
    d.add_argument("--imsize", type=int, default=448,
                   help="training size S; S/4 must be a multiple of the patch (default 448)")
    d.add_argument("--resize", choices=RESIZE_POLICIES, default="crop",
                   help="crop: short side to S, centre S x S crop (default); squash: resize to S x S (official)")
    d.add_argument("--downsample", choices=DOWNSAMPLE_MODES, default="antialias",
                   help="how the S/2 and S/4 images are made: antialias (default), area, strided (official, aliased)")
    d.add_argument("--augment", action="store_true", help="the official colour jitter (0.2, 0.2, 0.2, 0.2)")
    d.add_argument("--hflip", action="store_true", help="random horizontal flips")
    d.add_argument("--random_crop", action="store_true", help="random instead of centre S x S crop")
    d.add_argument("--scale_min", type=float, default=1.0,
                   help="zoom augmentation: the S x S crop covers a random fraction in [scale_min, 1] of the short "
                        "side (default 1 = off)")
    d.add_argument("--cache_views", type=int, default=1,
                   help="views per image in the feature cache: view 0 is the plain input, the others are augmented "
                        "by the flags above with seeds fixed by --seed (default 1 = un-augmented cache)")
    d.add_argument("--cache_dir", default=None,
                   help="cache the frozen backbone's targets here (fp16, keyed by backbone/layer/facet/S/data); "
                        "epochs after the first skip the backbone. Not with augmentation")
    d.add_argument("--num_workers", type=int, default=2, help="image-decoding worker processes (default 2)")
    m = p.add_argument_group("backbone")
    m.add_argument("--model_type", default=DEFAULT_BACKBONE, help=f"backbone: {', '.join(available_backbones())}")
    m.add_argument("--layer", type=int, default=-1, help="block whose facet LiFT learns (default -1 = last)")
    m.add_argument("--facet", default="key", choices=("key", "query", "value", "token"), help="default key")
    m.add_argument("--channel_order", default="dim_major", choices=("dim_major", "head_major"),
                   help="q/k/v channel order (default dim_major, the official one)")
    m.add_argument("--backbone_weights", default=None, help="explicit backbone weight file")
    m.add_argument("--offline", action="store_true", help="never download weights")
    m.add_argument("--random_init", action="store_true", help="random backbone (tests only)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=10, help="default 10")
    t.add_argument("--batch_size", type=int, default=8, help="global batch size, split over processes (default 8)")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    t.add_argument("--loss", choices=LOSSES, default="cosine", help="default cosine (1 - cos per location); cosine_centered subtracts the mean target feature first; cosine_raw_centered sums both")
    t.add_argument("--arch", choices=ARCHS, default="lift",
                   help="lift (the paper's, default), lift_noimage (the paper's ablation without the image input) "
                        "or resize_conv (the paper's baseline: bilinear 2x, then 3x3 convs; about LiFT's size)")
    t.add_argument("--head", choices=HEADS, default="plain",
                   help="LiFT output head: plain (the paper's), residual (a correction to bilinear upsampling) or "
                        "attend (softmax weights over the k x k low-resolution neighbours; stays in the backbone's "
                        "feature space). Default plain")
    t.add_argument("--head_kernel", type=int, default=3, help="attend head: neighbourhood k (odd, default 3)")
    t.add_argument("--head_prior", choices=ATTEND_PRIORS, default="bilinear",
                   help="attend head: prior of the weights, bilinear (starts as bilinear upsampling, default) or "
                        "uniform (starts as a k x k box filter)")
    t.add_argument("--residual", action="store_true",
                   help="residual LiFT: predict a correction to the bilinear 2x upsampling of the features (same "
                        "parameters as the official module; recorded in the LiFT file). Default: the paper's LiFT")
    t.add_argument("--seed", type=int, default=0, help="seed of the init, the split, the data order, the augmentations")
    t.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    t.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (default 0 = torch's choice; 1 is often faster on a busy shared CPU)")
    t.add_argument("--amp", choices=AMP_MODES, default="none", help="mixed precision on CUDA (bf16 or fp16)")
    o = p.add_argument_group("output")
    o.add_argument("--output_dir", default=None, help="default runs/lift_<model_type>")
    o.add_argument("--save_every", type=int, default=100,
                   help="write a training checkpoint every N steps (and at every epoch end; 0 = epoch ends only)")
    o.add_argument("--keep_checkpoints", type=int, default=3, help="keep the newest N training checkpoints (0 = all)")
    o.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output_dir")
    o.add_argument("--no_progress", action="store_true", help="no progress bars")
    p.add_argument("--_kill_after_steps", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--_kill_in_save_at_step", type=int, default=None, help=argparse.SUPPRESS)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data_root=args.data_root, output_dir=args.output_dir or f"runs/lift_{args.model_type}",
        model_type=args.model_type, layer=args.layer, facet=args.facet, channel_order=args.channel_order,
        backbone_weights=args.backbone_weights, offline=args.offline, random_init=args.random_init,
        imsize=args.imsize, resize=args.resize, downsample=args.downsample, loss=args.loss,
        residual=args.residual, arch=args.arch, head=args.head, head_kernel=args.head_kernel, head_prior=args.head_prior,
        scale_min=args.scale_min, cache_views=args.cache_views, lr=args.lr,
        epochs=args.epochs, batch_size=args.batch_size, save_every=args.save_every,
        keep_checkpoints=args.keep_checkpoints, seed=args.seed, augment=args.augment, hflip=args.hflip,
        random_crop=args.random_crop, val_fraction=0.0 if args.val_root else args.val_fraction, val_root=args.val_root,
        limit=args.limit, cache_dir=args.cache_dir, device=args.device, amp=args.amp, num_workers=args.num_workers,
        threads=args.threads, resume=args.resume, kill_after_steps=args._kill_after_steps,
        kill_in_save_at_step=args._kill_in_save_at_step,
    )


def make_extractor(cfg: TrainConfig, device: torch.device) -> ViTExtractor:
    """The frozen backbone, without any LiFT."""
    return ViTExtractor(cfg.model_type, layer=cfg.layer, facet=cfg.facet, channel_order=cfg.channel_order,
                        backbone_weights=cfg.backbone_weights, offline=cfg.offline, random_init=cfg.random_init,
                        lift_path=None, device=device)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _tqdm_factory(total: int, initial: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, dynamic_ncols=True, mininterval=1.0,
                unit="batch")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    if int(os.environ.get("RANK", "0")) == 0:
        shown = {k: v for k, v in asdict(cfg).items() if not k.startswith("kill_")}
        _stderr("train_lift.py: resolved arguments: " + json.dumps(shown, sort_keys=True))
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        result = Trainer(cfg, make_extractor, say=_stderr,
                         progress=None if args.no_progress else _tqdm_factory).run()
    except LiftKitError as exc:
        _stderr(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        _stderr("interrupted; continue with --resume")
        return 130
    return 0 if result.lift_path else 1


if __name__ == "__main__":
    raise SystemExit(main())
