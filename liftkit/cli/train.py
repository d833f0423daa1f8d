r"""Train a LiFT module for any backbone on any folder of images (resumable, multi-GPU).

``liftkit-train`` (installed) or ``python train_lift.py`` (checkout); the same flags. Every default is
:class:`liftkit.train.config.TrainConfig`'s.

    python train_lift.py --data_root /data/imagenet-sample-images --cache_dir .cache/lift_targets --epochs 20
    python train_lift.py --data_root photos/ --model_type dino_vits16 --augment --hflip --output_dir runs/dino16
    python train_lift.py --data_root photos/ --output_dir runs/dino16 --resume          # continue after a crash
    torchrun --nproc_per_node 4 train_lift.py --data_root /data/imagenet/train --batch_size 256 --amp bf16

Objective (the paper's): with --load_size S (alias --imsize) the frozen backbone gives features of the image at S,
S/2 and S/4; LiFT on the S/2 features (and the S/2 image) must reconstruct the S features, and LiFT on S/4 those at
S/2. Images are resized so the short side is S and centre-cropped to S x S (--resize_mode squash, alias --resize:
resized to S x S as the official script does); the S/2 and S/4 images are made by anti-aliased resizing
(--downsample strided: the official aliased x[..., ::2, ::2]). --residual trains the residual variant (a correction to bilinear
upsampling). Every epoch ends with a validation line: the mean cosine similarity to the backbone's features of
the 2x-larger input, for LiFT, bilinear and nearest upsampling.

Outputs in --output_dir: lift_<model_type>.safetensors (final; its metadata names the backbone, weights digest,
layer, facet and channel order, so lift_extractor.py refuses it elsewhere), lift_<model_type>_epochNNN.safetensors
(after each epoch), checkpoints/step_*.pt (training state for --resume), log.jsonl (arguments, step losses,
validation). See docs/training.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import MISSING, fields
from typing import List, Optional

import torch

from liftkit.cli import options
from liftkit.cli.runner import ItemFailures, Run, run_command
from liftkit.extractor import ViTExtractor
from liftkit.lift.model import ARCHS, ATTEND_PRIORS, HEADS
from liftkit.methods import Method
from liftkit.specs import get_spec
from liftkit.train.config import AMP_MODES, TrainConfig, TrainHooks, validate_config
from liftkit.train.data import DOWNSAMPLE_MODES, RESIZE_POLICIES
from liftkit.train.loop import Trainer
from liftkit.train.objective import LOSSES

COMMAND = "train_lift"
DEFAULTS = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}


def _d(name: str):
    """The default of a flag: TrainConfig's, the single source."""
    return DEFAULTS[name]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train_lift.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    options.add_data_root(d, help="folder of training images, searched recursively (ImageNet train/<wnid>/ or flat)")
    d.add_argument("--val_root", default=_d("val_root"),
                   help="separate folder of validation images (overrides --val_fraction)")
    d.add_argument("--val_fraction", type=float, default=_d("val_fraction"),
                   help=f"fraction of --data_root held out for validation, chosen by --seed (default "
                        f"{_d('val_fraction')})")
    d.add_argument("--limit", type=int, default=_d("limit"),
                   help="use at most this many images (spread over the listing)")
    d.add_argument("--downsample", choices=DOWNSAMPLE_MODES, default=_d("downsample"),
                   help="how the S/2 and S/4 images are made: antialias (default), area, strided (official, aliased)")
    d.add_argument("--augment", action="store_true", help="the official colour jitter (0.2, 0.2, 0.2, 0.2)")
    d.add_argument("--hflip", action="store_true", help="random horizontal flips")
    d.add_argument("--random_crop", action="store_true", help="random instead of centre S x S crop")
    d.add_argument("--scale_min", type=float, default=_d("scale_min"),
                   help="zoom augmentation: the S x S crop covers a random fraction in [scale_min, 1] of the short "
                        "side (default 1 = off)")
    d.add_argument("--cache_views", type=int, default=_d("cache_views"),
                   help="views per image in the feature cache: view 0 is the plain input, the others are augmented "
                        "by the flags above with seeds fixed by --seed (default 1 = un-augmented cache)")
    d.add_argument("--cache_dir", default=_d("cache_dir"),
                   help="cache the frozen backbone's targets here (fp16, keyed by backbone/layer/facet/S/data); "
                        "epochs after the first skip the backbone. With augmentation only with --cache_views N >= 2")
    d.add_argument("--num_workers", type=int, default=_d("num_workers"),
                   help=f"image-decoding worker processes (default {_d('num_workers')})")
    options.add_size_args(p, _d("imsize"), RESIZE_POLICIES, f"training size S; S/4 must be a multiple of the "
                          f"patch (default {_d('imsize')}); crop: short side to S then a centre S x S crop, squash: "
                          "resize to S x S (official)", imsize_alias=True, resize_alias=True)
    options.add_backbone_args(p, layer_help="block whose facet LiFT learns (default -1 = last)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=_d("epochs"), help=f"default {_d('epochs')}")
    t.add_argument("--batch_size", type=int, default=_d("batch_size"),
                   help=f"global batch size, split over processes (default {_d('batch_size')})")
    t.add_argument("--lr", type=float, default=_d("lr"), help=f"Adam learning rate (default {_d('lr')})")
    t.add_argument("--loss", choices=LOSSES, default=_d("loss"),
                   help="default cosine (1 - cos per location); cosine_centered subtracts the mean target feature "
                        "first; cosine_raw_centered sums both")
    t.add_argument("--arch", choices=ARCHS, default=_d("arch"),
                   help="lift (the paper's, default), lift_noimage (the paper's ablation without the image input) "
                        "or resize_conv (the paper's baseline: bilinear 2x, then 3x3 convs; about LiFT's size)")
    t.add_argument("--head", choices=HEADS, default=_d("head"),
                   help="LiFT output head: plain (the paper's), residual (a correction to bilinear upsampling) or "
                        "attend (softmax weights over the k x k low-resolution neighbours; stays in the backbone's "
                        "feature space). Default plain")
    t.add_argument("--head_kernel", type=int, default=_d("head_kernel"),
                   help="attend head: neighbourhood k (odd, default 3)")
    t.add_argument("--head_prior", choices=ATTEND_PRIORS, default=_d("head_prior"),
                   help="attend head: prior of the weights, bilinear (starts as bilinear upsampling, default) or "
                        "uniform (starts as a k x k box filter)")
    t.add_argument("--residual", action="store_true",
                   help="residual LiFT: predict a correction to the bilinear 2x upsampling of the features (same "
                        "parameters as the official module; recorded in the LiFT file). Default: the paper's LiFT")
    m = p.add_argument_group("correspondence term (beyond the paper; liftkit.train.matching)")
    m.add_argument("--match_weight", type=float, default=_d("match_weight"),
                   help="weight of an InfoNCE term: LiFT features must find their own cell again in a randomly "
                        "cropped, scaled, mirrored and colour-jittered copy of the input (one more backbone pass "
                        "at S/2 per step); default 0 = the paper's objective only")
    m.add_argument("--match_temp", type=float, default=_d("match_temp"),
                   help=f"its softmax temperature on cosine (default {_d('match_temp')})")
    m.add_argument("--match_grid", type=int, default=_d("match_grid"),
                   help=f"its G x G query points per view (default {_d('match_grid')})")
    m.add_argument("--match_scale_min", type=float, default=_d("match_scale_min"),
                   help=f"its copies are sub-boxes of side [this, 1] of the input (default {_d('match_scale_min')})")
    t.add_argument("--init_lift", default=None, metavar="PATH",
                   help="start from the weights of this LiFT file (fine-tuning): it must be for the same backbone "
                        "weights, layer, facet, arch and head")
    t.add_argument("--seed", type=int, default=_d("seed"),
                   help="seed of the init, the split, the data order, the augmentations")
    t.add_argument("--threads", type=int, default=_d("threads"),
                   help="CPU threads for torch (default 0 = torch's choice; 1 is often faster on a busy shared CPU)")
    t.add_argument("--amp", choices=AMP_MODES, default=_d("amp"), help="mixed precision on CUDA (bf16 or fp16)")
    options.add_output_args(p, None, "default runs/lift_<model_type>", json_help=None)
    o = p.add_argument_group("output")
    o.add_argument("--save_every", type=int, default=_d("save_every"),
                   help="write a training checkpoint every N steps (and at every epoch end; 0 = epoch ends only)")
    o.add_argument("--keep_checkpoints", type=int, default=_d("keep_checkpoints"),
                   help="keep the newest N training checkpoints (0 = all)")
    o.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output_dir")
    options.add_runtime_args(p, device_default=_d("device"), dtype=False, quiet_aliases=("--no_progress",))
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data_root=args.data_root, output_dir=args.output_dir or "",
        model_type=args.model_type, layer=args.layer, facet=args.facet, channel_order=args.channel_order,
        backbone_weights=args.backbone_weights, offline=args.offline, random_init=args.random_init,
        imsize=args.load_size, resize=args.resize_mode, downsample=args.downsample, loss=args.loss,
        residual=args.residual, arch=args.arch, head=args.head, head_kernel=args.head_kernel, head_prior=args.head_prior,
        scale_min=args.scale_min, cache_views=args.cache_views, lr=args.lr,
        epochs=args.epochs, batch_size=args.batch_size, save_every=args.save_every,
        keep_checkpoints=args.keep_checkpoints, seed=args.seed, augment=args.augment, hflip=args.hflip,
        random_crop=args.random_crop, val_fraction=0.0 if args.val_root else args.val_fraction, val_root=args.val_root,
        limit=args.limit, cache_dir=args.cache_dir, device=args.device, amp=args.amp, num_workers=args.num_workers,
        threads=args.threads, resume=args.resume, init_lift=args.init_lift, match_weight=args.match_weight,
        match_temp=args.match_temp, match_grid=args.match_grid, match_scale_min=args.match_scale_min,
    )


def make_extractor(cfg: TrainConfig, device: torch.device) -> ViTExtractor:
    """The frozen backbone, without any LiFT."""
    return ViTExtractor(cfg.model_type, layer=cfg.layer, facet=cfg.facet, channel_order=cfg.channel_order,
                        backbone_weights=cfg.backbone_weights, offline=cfg.offline, random_init=cfg.random_init,
                        lift_path=None, device=device)


def _tqdm_factory(total: int, initial: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, dynamic_ncols=True, mininterval=1.0,
                unit="batch")


def main(argv: Optional[List[str]] = None, hooks: Optional[TrainHooks] = None) -> int:
    """Run the command; ``hooks``: callbacks into the trainer (tests install them, e.g. to kill the process)."""
    return run_command(COMMAND, build_parser(), argv, lambda args, run: _run(args, run, hooks))


def _run(args, run: Run, hooks: Optional[TrainHooks]) -> None:
    cfg = config_from_args(args)
    validate_config(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    # the backbone on the S x S batch (per process) and LiFT on it, before anything is loaded
    world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    options.check_memory(args, get_spec(cfg.model_type), cfg.imsize, cfg.imsize, [Method.parse("lift")],
                         {"size": "--imsize (--load_size)", "lift_iter": "--imsize (--load_size)"},
                         batch=max(1, cfg.batch_size // world))
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    say = (lambda msg: run.log.info(msg)) if main_rank else (lambda msg: None)
    try:
        result = Trainer(cfg, make_extractor, say=say, progress=None if args.quiet else _tqdm_factory,
                         hooks=hooks, provenance=run.info).run()
    except KeyboardInterrupt:
        run.log.error("interrupted; continue with --resume")
        raise SystemExit(130) from None
    if not result.lift_path:
        raise ItemFailures("training produced no LiFT file", [str(cfg.output_dir)])
