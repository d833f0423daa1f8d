"""The LiFT trainer: data, targets, optimisation, validation, checkpoints and resumption, on one or many processes.

One optimiser step (see :mod:`liftkit.train.objective`): a batch of B images at S x S, the frozen backbone's
features at S, S/2 and S/4 (computed now, or read from the feature cache), LiFT on the S/2 and S/4 features,
``loss(S/2 -> S) + loss(S/4 -> S/2)``, Adam. LiFT's BatchNorm layers are in train mode during training and in eval
mode for validation.

Determinism and resumption: the order of each epoch and every sample's augmentation are pure functions of
(seed, epoch) (:class:`~liftkit.train.data.EpochPlan`); a checkpoint records the epoch, the batches of it already
consumed, the step, the model, the optimiser and every RNG state. Resuming skips the consumed batches and continues,
so on CPU a run killed at any moment and resumed ends bit-identical to an uninterrupted one (same flags).

Several processes (torchrun): ``--batch_size`` is the global batch; each process takes a contiguous slice of every
global batch, gradients are averaged by DistributedDataParallel and BatchNorm statistics span the global batch
(:mod:`liftkit.train.distributed`). Rank 0 alone writes checkpoints, LiFT files and the log.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from liftkit.backbones.specs import get_spec
from liftkit.device import resolve_device
from liftkit.errors import CheckpointError, ConfigError, LiftKitError
from liftkit.lift.checkpoint import LiftMeta, save_lift
from liftkit.lift.model import ARCHS, ATTEND_PRIORS, HEADS, LiFT
from liftkit.train import checkpointing as ckpt
from liftkit.train.data import (
    DOWNSAMPLE_MODES,
    RESIZE_POLICIES,
    Augment,
    EpochPlan,
    ImageFolderData,
    ViewsData,
    collate_images,
    find_images,
    listing_digest,
    screen_images,
    split_train_val,
)
from liftkit.train.distributed import (
    all_reduce_,
    barrier,
    broadcast_object,
    convert_batchnorm,
    ddp_wrap,
    init_distributed,
    shutdown_distributed,
)
from liftkit.train.feature_cache import FeatureCache
from liftkit.train.objective import (LOSSES, LiftPairs, PairMetrics, TargetMeans, Targets, make_targets, pair_losses,
                                     validate_batch)

AMP_MODES = ("none", "bf16", "fp16")
# one batch from a target source: the targets (None when no image of it was readable) and [(path, reason)] skipped
Batch = Tuple[Optional[Targets], List[Tuple[str, str]]]


@dataclass
class TrainConfig:
    """Resolved training settings (the script's flags; see ``train_lift.py --help``)."""

    data_root: str
    output_dir: str = "runs/lift"
    model_type: str = "dinov2_vits14_imgfocus"
    layer: int = -1
    facet: str = "key"
    channel_order: str = "dim_major"
    backbone_weights: Optional[str] = None
    offline: bool = False
    random_init: bool = False
    imsize: int = 448
    resize: str = "crop"
    downsample: str = "antialias"
    loss: str = "cosine"
    residual: bool = False  # legacy spelling of head="residual"
    head: str = "plain"  # plain | residual | attend (liftkit.lift.model.HEADS)
    head_kernel: int = 3  # attend head: k x k neighbourhood
    head_prior: str = "bilinear"  # attend head: prior of its logits
    arch: str = "lift"  # lift | lift_noimage | resize_conv (liftkit.lift.model.ARCHS)
    lr: float = 1e-3
    epochs: int = 5
    batch_size: int = 8
    save_every: int = 100
    keep_checkpoints: int = 3
    seed: int = 0
    augment: bool = False
    hflip: bool = False
    random_crop: bool = False
    scale_min: float = 1.0  # zoom augmentation: the crop covers [scale_min, 1] of the short side
    cache_views: int = 1  # views per image in the feature cache (view 0 plain, the others augmented)
    val_fraction: float = 0.05
    val_root: Optional[str] = None
    limit: Optional[int] = None
    cache_dir: Optional[str] = None
    device: str = "auto"
    amp: str = "none"
    num_workers: int = 2
    threads: int = 0  # torch CPU threads, applied by the script (0 = torch's default); recorded for the record
    resume: bool = False
    # test hooks (hidden flags): SIGKILL this process after optimiser step N / between the write and the rename of
    # the checkpoint of step N
    kill_after_steps: Optional[int] = None
    kill_in_save_at_step: Optional[int] = None

    @property
    def augmentation(self) -> Augment:
        return Augment(color_jitter=self.augment, hflip=self.hflip, random_crop=self.random_crop,
                       scale_min=self.scale_min)

    @property
    def lift_head(self) -> str:
        return "residual" if self.residual and self.head == "plain" else self.head


class _NullBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, s: str) -> None: ...
    def close(self) -> None: ...


# (total, initial, description) -> a bar with update(n), set_postfix_str(s), close()
ProgressFactory = Callable[[int, int, str], Any]


class JsonlLog:
    """Append-only JSON-lines log (one object per line, flushed per line)."""

    def __init__(self, path: Optional[Path]):
        self.path = path

    def write(self, event: str, **fields: Any) -> None:
        if self.path is None:
            return
        rec = {"event": event, "time": round(time.time(), 3), **fields}
        with open(self.path, "a") as f:
            f.write(json.dumps(_json_safe(rec), sort_keys=False) + "\n")


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def validate_config(cfg: TrainConfig, world: int = 1) -> None:
    """Cheap checks of the flags, before anything heavy is loaded (one-line ConfigError each)."""
    p = get_spec(cfg.model_type).patch_size
    if cfg.imsize <= 0 or cfg.imsize % (4 * p):
        ok = max(4 * p, (cfg.imsize // (4 * p)) * 4 * p)
        raise ConfigError(
            f"--imsize {cfg.imsize} does not fit the {p}-px patch of {cfg.model_type}: S/4 must be a whole number of "
            f"patches, so S must be a multiple of 4*{p}={4 * p} (e.g. {ok} or {ok + 4 * p})"
        )
    checks = [
        (cfg.loss in LOSSES, f"unknown --loss '{cfg.loss}'; choose one of: {', '.join(LOSSES)}"),
        (cfg.downsample in DOWNSAMPLE_MODES,
         f"unknown --downsample '{cfg.downsample}'; choose one of: {', '.join(DOWNSAMPLE_MODES)}"),
        (cfg.resize in RESIZE_POLICIES,
         f"unknown --resize '{cfg.resize}'; choose one of: {', '.join(RESIZE_POLICIES)}"),
        (cfg.amp in AMP_MODES, f"unknown --amp '{cfg.amp}'; choose one of: {', '.join(AMP_MODES)}"),
        (cfg.epochs >= 1, f"--epochs {cfg.epochs} must be at least 1"),
        (cfg.batch_size >= 1, f"--batch_size {cfg.batch_size} must be at least 1"),
        (cfg.lr > 0, f"--lr {cfg.lr} must be positive"),
        (cfg.save_every >= 0, f"--save_every {cfg.save_every} must be >= 0 (0 = only at the end of each epoch)"),
        (cfg.seed >= 0, f"--seed {cfg.seed} must be >= 0"),
        (cfg.num_workers >= 0, f"--num_workers {cfg.num_workers} must be >= 0"),
        (cfg.threads >= 0, f"--threads {cfg.threads} must be >= 0"),
        (0.0 <= cfg.val_fraction < 1.0, f"--val_fraction {cfg.val_fraction} must be in [0, 1)"),
        (cfg.batch_size % world == 0, f"--batch_size {cfg.batch_size} (the global batch) must be divisible by the "
                                      f"{world} processes"),
        (not (cfg.cache_dir and cfg.augmentation.any and cfg.cache_views < 2),
         "--cache_dir with one view per image stores un-augmented targets and cannot be combined with "
         "--augment/--hflip/--random_crop/--scale_min; pass --cache_views N (N >= 2) or drop the augmentation"),
        (cfg.cache_views >= 1, f"--cache_views {cfg.cache_views} must be at least 1"),
        (cfg.cache_views == 1 or (cfg.cache_dir and cfg.augmentation.any),
         f"--cache_views {cfg.cache_views} needs --cache_dir and an augmentation (--random_crop, --scale_min, "
         "--hflip or --augment)"),
        (0.1 <= cfg.scale_min <= 1.0, f"--scale_min {cfg.scale_min} must be in [0.1, 1]"),
        (cfg.arch in ARCHS, f"unknown --arch '{cfg.arch}'; choose one of: {', '.join(ARCHS)}"),
        (cfg.lift_head in HEADS, f"unknown --head '{cfg.head}'; choose one of: {', '.join(HEADS)}"),
        (cfg.head_kernel >= 3 and cfg.head_kernel % 2 == 1 and cfg.head_kernel <= 9,
         f"--head_kernel {cfg.head_kernel} must be odd and in 3..9"),
        (cfg.head_prior in ATTEND_PRIORS,
         f"unknown --head_prior '{cfg.head_prior}'; choose one of: {', '.join(ATTEND_PRIORS)}"),
        (not (cfg.residual and cfg.head not in ("plain", "residual")),
         f"--residual contradicts --head {cfg.head}; drop --residual"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


# --------------------------------------------------------------------------------------------- target sources
class _CachedSource:
    """Targets read from a :class:`FeatureCache`; ``rows`` maps dataset positions to cache rows."""

    def __init__(self, cache: FeatureCache, rows: Sequence[int], device: torch.device):
        self.cache, self.rows, self.device = cache, list(rows), device

    def __len__(self) -> int:
        return len(self.rows)

    def iterate(self, batches: List[List[Tuple[int, int]]]) -> Iterator[Batch]:
        for items in batches:
            yield self.cache.gather([self.rows[i] for i, _ in items], self.device), []


class _LiveSource:
    """Targets computed now: images decoded by a DataLoader, three backbone passes per batch."""

    def __init__(self, dataset: ImageFolderData, rows: Sequence[int], extract: Callable, downsample: str,
                 device: torch.device, num_workers: int, autocast: Callable):
        self.dataset, self.rows, self.extract = dataset, list(rows), extract
        self.downsample, self.device, self.num_workers, self.autocast = downsample, device, num_workers, autocast

    def __len__(self) -> int:
        return len(self.rows)

    def iterate(self, batches: List[List[Tuple[int, int]]]) -> Iterator[Batch]:
        mapped = [[(self.rows[i], s) for i, s in items] for items in batches]
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=mapped, collate_fn=collate_images, num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
        )
        for batch in loader:
            errors = [(str(self.dataset.paths[i]), msg) for i, msg in batch["errors"]]
            if batch["image"] is None:
                yield None, errors
                continue
            images = batch["image"].to(self.device, non_blocking=True)
            with self.autocast():
                targets = make_targets(self.extract, images, self.downsample)
            yield {k: v.float() for k, v in targets.items()}, errors


# --------------------------------------------------------------------------------------------- trainer
@dataclass
class TrainResult:
    """What a finished run produced."""

    lift_path: Path
    steps: int
    epochs: int
    val: Dict[str, float] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)


class Trainer:
    """Train one LiFT (see the module docstring).

    Args:
        cfg: the resolved settings.
        say: one-line human messages (rank 0 only; the script prints them to stderr).
        progress: progress-bar factory (rank 0 only), e.g. a tqdm constructor; default none.
        extractor_factory: builds the frozen backbone, ``(cfg, device) -> ViTExtractor``-like object with
            ``extract_descriptors``, ``embed_dim``, ``patch_size``, ``layer``, ``facet``, ``channel_order``, ``spec``
            and ``info`` (the script passes ``extractor.ViTExtractor``; the library does not import the facade).
    """

    def __init__(self, cfg: TrainConfig, extractor_factory: Callable[[TrainConfig, torch.device], Any],
                 say: Callable[[str], None] = lambda s: None, progress: Optional[ProgressFactory] = None):
        self.cfg = cfg
        self.extractor_factory = extractor_factory
        self._say = say
        self._progress = progress
        self.skipped: Dict[str, str] = {}

    # ------------------------------------------------------------------ helpers
    def say(self, msg: str) -> None:
        if self.ctx.is_main:
            self._say(msg)

    def bar(self, total: int, initial: int, desc: str):
        if self.ctx.is_main and self._progress is not None:
            return self._progress(total, initial, desc)
        return _NullBar()

    def autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.amp)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=dtype)

    def _on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0; a LiftKitError it raises is raised on every rank (no rank is left waiting)."""
        result, err = None, None
        if self.ctx.is_main:
            try:
                result = fn()
            except LiftKitError as exc:
                err = (type(exc).__name__, str(exc))
        err = broadcast_object(err, self.ctx)
        if err is not None:
            cls = {"CheckpointError": CheckpointError, "ConfigError": ConfigError}.get(err[0], LiftKitError)
            raise cls(err[1])
        return broadcast_object(result, self.ctx)

    def _note_skipped(self, items: Sequence[Tuple[str, str]]) -> None:
        for path, why in items:
            if path not in self.skipped:
                self.skipped[path] = why
                self.log.write("skipped", path=path, reason=why)

    # ------------------------------------------------------------------ entry point
    def run(self) -> TrainResult:
        cfg = self.cfg
        validate_config(cfg, int(os.environ.get("WORLD_SIZE", "1")))
        device = resolve_device(cfg.device)
        if cfg.amp != "none" and device.type != "cuda":
            raise ConfigError(f"--amp {cfg.amp} needs a CUDA device; CPU training runs in float32 (drop --amp)")
        self.ctx = init_distributed(device.type == "cuda")
        try:
            if self.ctx.enabled and device.type == "cuda":
                device = torch.device("cuda", self.ctx.local_rank)
                torch.cuda.set_device(device)
            if device.type == "cuda":
                torch.backends.cudnn.benchmark = True
            self.device = device
            return self._run()
        finally:
            shutdown_distributed(self.ctx)

    def _prepare_output(self) -> None:
        out = Path(self.cfg.output_dir)
        try:
            (out / "checkpoints").mkdir(parents=True, exist_ok=True)
            probe = out / f".write_test.{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"cannot write to --output_dir '{out}' ({type(exc).__name__}: {exc.strerror or exc}); "
                              "choose a writable folder") from None
        existing = ckpt.list_checkpoints(out / "checkpoints")
        if existing and not self.cfg.resume:
            raise ConfigError(f"'{out / 'checkpoints'}' already holds checkpoints (newest: step {existing[-1][0]}); "
                              "pass --resume to continue that run or choose another --output_dir")

    def _run(self) -> TrainResult:
        cfg, ctx = self.cfg, self.ctx
        validate_config(cfg, ctx.world)
        out = Path(cfg.output_dir)
        ckpt_dir = out / "checkpoints"
        self._on_main(self._prepare_output)
        barrier(ctx)
        self.log = JsonlLog(out / "log.jsonl" if ctx.is_main else None)
        self.log.write("config", args=asdict(cfg), world_size=ctx.world, device=str(self.device))

        # ---- data
        p = get_spec(cfg.model_type).patch_size
        listed = find_images(Path(cfg.data_root), cfg.limit)
        usable, bad = screen_images(listed, p)
        if not usable:
            raise ConfigError(f"none of the {len(listed)} image files under '{cfg.data_root}' can be used (first: "
                              f"{bad[0][0]}: {bad[0][1]}); check the folder")
        if cfg.val_root:
            val_listed = find_images(Path(cfg.val_root), cfg.limit, flag="--val_root")
            val_paths, bad_val = screen_images(val_listed, p)
            bad = bad + bad_val
            held = {q.resolve() for q in val_listed}
            train_paths = [q for q in usable if q.resolve() not in held]
            if len(train_paths) < len(usable):
                self.say(f"{len(usable) - len(train_paths)} images of --data_root are also under --val_root: "
                         "they are used for validation only")
            if not train_paths:
                raise ConfigError(f"every usable image of --data_root '{cfg.data_root}' is also under --val_root; "
                                  "give disjoint folders")
        else:
            # the split is made on the usable images, so the validation set has the requested size
            train_paths, val_paths = split_train_val(usable, cfg.val_fraction, cfg.seed)
        self._note_skipped([(str(a), b) for a, b in bad])
        summary = {"data_root": str(cfg.data_root), "val_root": str(cfg.val_root or ""), "n_listed": len(listed),
                   "n_train": len(train_paths), "n_val": len(val_paths), "n_skipped_at_scan": len(bad),
                   "train_images_digest": listing_digest(train_paths)}
        self.log.write("data", **summary)
        self.say(f"data: {len(train_paths)} training and {len(val_paths)} validation images "
                 f"({len(bad)} skipped at scan) from {cfg.data_root}")

        # ---- backbone
        ext = self.extractor_factory(cfg, self.device)
        self.ext = ext
        identity = {
            "backbone": ext.spec.name, "backbone_weights_sha256": ext.info.weights_sha256, "layer": int(ext.layer),
            "facet": ext.facet, "channel_order": ext.channel_order, "patch_size": int(ext.patch_size),
            "channels": int(ext.embed_dim), "imsize": cfg.imsize, "resize": cfg.resize, "downsample": cfg.downsample,
            "loss": cfg.loss, "residual": cfg.lift_head == "residual", "batch_size": cfg.batch_size, "seed": cfg.seed,
            "augment": cfg.augment, "hflip": cfg.hflip, "random_crop": cfg.random_crop,
            **({"arch": cfg.arch} if cfg.arch != "lift" else {}),
            **({"head": cfg.lift_head, "head_kernel": cfg.head_kernel, "head_prior": cfg.head_prior}
               if cfg.lift_head == "attend" else {}),
            **({"cache_views": cfg.cache_views, "scale_min": cfg.scale_min}
               if cfg.cache_views > 1 or cfg.scale_min < 1 else {}),
            "train_images_digest": summary["train_images_digest"],
        }

        # ---- targets: cache or live
        aug = cfg.augmentation
        train_ds = ImageFolderData(train_paths, cfg.imsize, ext.spec.mean, ext.spec.std, p, cfg.resize, aug)
        val_ds = ImageFolderData(val_paths, cfg.imsize, ext.spec.mean, ext.spec.std, p, cfg.resize, Augment())
        if cfg.cache_dir:
            # one cache over every usable image of --data_root (so any --val_fraction / --seed reuses it), plus one
            # over --val_root when given; the splits are row subsets
            if cfg.cache_views > 1:  # row = view of an image; validation reads view 0 (the plain input) only
                all_ds = ViewsData(usable, cfg.imsize, ext.spec.mean, ext.spec.std, p, cfg.resize, aug,
                                   cfg.cache_views, cfg.seed)
                train_src = self._cached_source(all_ds, "data_root", all_ds.rows(train_paths))
                val_src = _CachedSource(train_src.cache, self._valid_rows(train_src.cache, all_ds.rows(
                    val_paths, all_views=False)), self.device) if val_paths and not cfg.val_root else None
            else:
                all_ds = ImageFolderData(usable, cfg.imsize, ext.spec.mean, ext.spec.std, p, cfg.resize, Augment())
                train_src = self._cached_source(all_ds, "data_root", self._path_rows(all_ds.paths, train_paths))
                val_src = None
                if val_paths and not cfg.val_root:
                    val_src = _CachedSource(train_src.cache, self._valid_rows(
                        train_src.cache, self._path_rows(all_ds.paths, val_paths)), self.device)
            if val_paths and cfg.val_root:
                val_src = self._cached_source(val_ds, "val_root", self._path_rows(val_ds.paths, val_paths))
        else:
            train_src = _LiveSource(train_ds, range(len(train_paths)), ext.extract_descriptors, cfg.downsample,
                                    self.device, cfg.num_workers, self.autocast)
            val_src = _LiveSource(val_ds, range(len(val_paths)), ext.extract_descriptors, cfg.downsample,
                                  self.device, cfg.num_workers, self.autocast) if val_paths else None
        n_rows = len(train_src)
        if n_rows < cfg.batch_size:
            raise ConfigError(f"only {n_rows} usable training images, fewer than --batch_size {cfg.batch_size}; "
                              "lower --batch_size or add images")
        self.centers = self._target_means(train_src, int(ext.embed_dim))

        # ---- model, optimiser, resume
        torch.manual_seed(cfg.seed)
        lift = LiFT(ext.embed_dim, ext.patch_size, head=cfg.lift_head, kernel=cfg.head_kernel, prior=cfg.head_prior,
                    arch=cfg.arch)
        pairs: torch.nn.Module = LiftPairs(lift)
        if ctx.enabled:
            pairs = convert_batchnorm(pairs, self.device)
        pairs = pairs.to(self.device)
        opt = torch.optim.Adam(pairs.parameters(), lr=cfg.lr)
        scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")
        epoch, batch_in_epoch, step, last_val = 0, 0, 0, {}
        if cfg.resume:
            for t in ckpt.temp_files(ckpt_dir):
                if ctx.is_main:
                    t.unlink(missing_ok=True)
                    self.say(f"removed the leftover temporary file {t.name} of an interrupted checkpoint write")
            path, state, notes = ckpt.find_latest(ckpt_dir)
            for n in notes:
                self.say(f"warning: {n}; using an older checkpoint")
            if state is None:
                self.say(f"--resume: no checkpoint in '{ckpt_dir}', starting from scratch")
            else:
                ckpt.check_identity(state["identity"], identity, path)
                pairs.lift.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])
                for g in opt.param_groups:
                    g["lr"] = cfg.lr
                if state.get("scaler") and scaler.is_enabled():
                    scaler.load_state_dict(state["scaler"])
                epoch, batch_in_epoch, step = int(state["epoch"]), int(state["batch"]), int(state["step"])
                extra = json.loads(state.get("extra", "{}"))
                last_val = extra.get("val", {})
                for k, v in extra.get("skipped", {}).items():
                    self.skipped.setdefault(k, v)
                ckpt.restore_rng_state(state["rng"])
                self.log.write("resume", checkpoint=str(path), epoch=epoch, batch=batch_in_epoch, step=step)
                self.say(f"resumed from {path} (epoch {epoch + 1}, batch {batch_in_epoch}, step {step})")
        model = ddp_wrap(pairs, ctx, self.device)

        def save_state(ep: int, b: int, st: int) -> None:
            if not ctx.is_main:
                return
            hook = None
            if cfg.kill_in_save_at_step is not None and st == cfg.kill_in_save_at_step:
                hook = lambda tmp: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731 - test hook
            state = {
                "format": ckpt.STATE_FORMAT, "identity": identity,
                "model": {k: v.detach().cpu() for k, v in pairs.lift.state_dict().items()},
                "optimizer": opt.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "epoch": ep, "batch": b, "step": st, "rng": ckpt.capture_rng_state(),
                "extra": json.dumps(_json_safe({"val": last_val, "skipped": self.skipped, "world": ctx.world})),
            }
            ckpt.atomic_torch_save(state, ckpt.checkpoint_path(ckpt_dir, st), before_replace=hook)
            ckpt.prune_checkpoints(ckpt_dir, cfg.keep_checkpoints)

        # ---- epochs
        meta_base = dict(
            backbone=ext.spec.name, backbone_weights_sha256=ext.info.weights_sha256, layer=int(ext.layer),
            facet=ext.facet, channel_order=ext.channel_order, patch_size=int(ext.patch_size),
            channels=int(ext.embed_dim), mean=tuple(ext.spec.mean), std=tuple(ext.spec.std),
            head=cfg.lift_head, head_kernel=cfg.head_kernel, head_prior=cfg.head_prior, arch=cfg.arch,
        )
        for ep in range(epoch, cfg.epochs):
            plan = EpochPlan(n_rows, cfg.batch_size, cfg.seed, ep, ctx.rank, ctx.world)
            start_b = batch_in_epoch if ep == epoch else 0
            step = self._train_epoch(model, pairs, opt, scaler, train_src, plan, start_b, step, save_state)
            last_val = self._validate(pairs.lift, val_src, ep)
            if ctx.is_main:
                meta = LiftMeta(**meta_base, train_config=self._train_config(summary, ep + 1, step, last_val))
                save_lift(out / f"lift_{cfg.model_type}_epoch{ep + 1:03d}.safetensors", pairs.lift, meta)
            save_state(ep + 1, 0, step)
            barrier(ctx)

        final = out / f"lift_{cfg.model_type}.safetensors"
        if ctx.is_main:
            meta = LiftMeta(**meta_base, train_config=self._train_config(summary, cfg.epochs, step, last_val))
            save_lift(final, pairs.lift, meta)
            self.log.write("done", lift_path=str(final), steps=step, val=last_val, n_skipped=len(self.skipped))
            if self.skipped:
                self.say(f"skipped {len(self.skipped)} unusable image files (listed in {out / 'log.jsonl'})")
            self.say(f"wrote {final}")
        barrier(ctx)
        return TrainResult(final, step, cfg.epochs, last_val, dict(self.skipped))

    # ------------------------------------------------------------------ pieces
    def _train_config(self, summary: Dict[str, Any], epochs_done: int, step: int,
                      val: Dict[str, float]) -> Dict[str, Any]:
        args = {k: v for k, v in asdict(self.cfg).items() if not k.startswith("kill_")}
        means = {k: [round(float(x), 6) for x in v.flatten()] for k, v in self.centers.items()}
        return _json_safe({"args": args, "data": dict(summary, n_skipped=len(self.skipped)),
                           "epochs_done": epochs_done, "steps": step, "val": val, "world_size": self.ctx.world,
                           "target_mean": means})

    @staticmethod
    def _path_rows(paths: Sequence[Path], subset: Sequence[Path]) -> List[int]:
        """Rows of ``subset`` (in its order) in a one-view listing."""
        pos = {q: i for i, q in enumerate(paths)}
        return [pos[q] for q in subset]

    @staticmethod
    def _valid_rows(cache: FeatureCache, rows: Sequence[int]) -> List[int]:
        """``rows`` without the images the cache found unreadable."""
        valid = cache.valid()
        return [r for r in rows if valid[r]]

    def _cached_source(self, ds: ImageFolderData, split: str, rows: Sequence[int]) -> _CachedSource:
        """Open (building it first if needed) the feature cache of all of ``ds``; the source serves ``rows``."""
        cfg, ctx, ext = self.cfg, self.ctx, self.ext
        fields = {"backbone": ext.spec.name, "weights_sha256": ext.info.weights_sha256, "layer": int(ext.layer),
                  "facet": ext.facet, "channel_order": ext.channel_order, "mean": list(ext.spec.mean),
                  "std": list(ext.spec.std), "imsize": cfg.imsize, "resize": cfg.resize, "downsample": cfg.downsample}
        if isinstance(ds, ViewsData):
            aug = cfg.augmentation
            fields.update(views=ds.views, view_seed=ds.seed, augment=aug.color_jitter, hflip=aug.hflip,
                          random_crop=aug.random_crop, scale_min=aug.scale_min)
        cache = FeatureCache(Path(cfg.cache_dir), fields, listing_digest(ds.paths), len(ds), ext.embed_dim,
                             ext.patch_size, cfg.imsize)
        built = 0
        if not cache.is_complete():
            self._on_main(cache.create)
            barrier(ctx)
            cache.open(writable=True)
            chunks = cache.pending_chunks(cfg.batch_size, ctx.rank, ctx.world)
            built = sum(len(c) for c in chunks)
            n_all = sum(len(c) for c in cache.pending_chunks(cfg.batch_size))
            self.say(f"feature cache ({split}): computing the backbone targets of {n_all} images into {cache.dir}")
            src = _LiveSource(ds, range(len(ds)), ext.extract_descriptors, cfg.downsample, self.device,
                              cfg.num_workers, self.autocast)
            bar = self.bar(len(chunks), 0, f"cache {split}")
            t0 = time.time()
            for items, (targets, errors) in zip(chunks, src.iterate([[(i, 0) for i in c] for c in chunks])):
                why = dict(errors)  # path -> reason; every row (view) of an unreadable image is bad
                bad = [(i, why[str(ds.paths[i])]) for i in items if str(ds.paths[i]) in why]
                ok = [i for i in items if str(ds.paths[i]) not in why]
                cache.write(ok, targets or {}, bad, ctx.rank)
                bar.update(1)
            bar.close()
            barrier(ctx)
            self._on_main(cache.finalize)
            barrier(ctx)
            self.log.write("cache_built", split=split, dir=str(cache.dir), images=n_all,
                           seconds=round(time.time() - t0, 2))
        else:
            self.log.write("cache_reused", split=split, dir=str(cache.dir), images=len(ds))
            self.say(f"feature cache ({split}): reusing {cache.dir}")
        cache.open(writable=False)
        bad = cache.manifest().get("bad", {})
        self._note_skipped([(str(ds.paths[int(k)]), v) for k, v in bad.items()])
        return _CachedSource(cache, self._valid_rows(cache, rows), self.device)

    def _train_epoch(self, model, pairs, opt, scaler, src, plan: EpochPlan, start_b: int, step: int,
                     save_state: Callable[[int, int, int], None]) -> int:
        cfg, ctx = self.cfg, self.ctx
        pairs.train()
        bar = self.bar(plan.num_batches, start_b, f"epoch {plan.epoch + 1}/{cfg.epochs}")
        t0, seen = time.time(), 0
        sums = torch.zeros(3, dtype=torch.float64)
        new_errors: List[Tuple[str, str]] = []
        for b, (targets, errors) in enumerate(src.iterate(plan.local_batches(start_b)), start=start_b):
            new_errors += errors
            n_local = 0 if targets is None else int(targets["feat_full"].shape[0])
            n_min = int(all_reduce_(torch.tensor([n_local]), ctx, "min")[0]) if ctx.enabled else n_local
            stats = torch.zeros(4, dtype=torch.float64)
            if n_min > 0:
                with self.autocast():
                    loss, parts = pair_losses(model, targets, cfg.loss, self.centers)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                stats = torch.tensor([float(loss.detach()), float(parts["half"].detach()),
                                      float(parts["quarter"].detach()), n_local],
                                     dtype=torch.float64)
            all_reduce_(stats, ctx)
            step += 1
            seen += int(stats[3])
            if n_min > 0:
                mean = (stats[:3] / ctx.world).tolist()
                sums += torch.tensor(mean, dtype=torch.float64)
                self.log.write("step", epoch=plan.epoch + 1, batch=b + 1, step=step, loss=mean[0], loss_half=mean[1],
                               loss_quarter=mean[2], images=int(stats[3]))
                bar.set_postfix_str(f"loss {mean[0]:.4f}")
            else:
                self.log.write("step_skipped", epoch=plan.epoch + 1, batch=b + 1, step=step,
                               reason="a process had no readable image in its part of the batch")
            bar.update(1)
            if cfg.kill_after_steps is not None and step == cfg.kill_after_steps:
                os.kill(os.getpid(), signal.SIGKILL)  # test hook: die mid-run, no cleanup
            if cfg.save_every and step % cfg.save_every == 0 and b + 1 < plan.num_batches:
                self._gather_errors(new_errors)
                new_errors = []
                save_state(plan.epoch, b + 1, step)
        bar.close()
        self._gather_errors(new_errors)
        secs = time.time() - t0
        done = plan.num_batches - start_b
        self.log.write("epoch", epoch=plan.epoch + 1, step=step, seconds=round(secs, 3), batches=done,
                       images_per_s=round(seen / secs, 3) if secs > 0 else None,
                       mean_loss=float(sums[0] / max(done, 1)))
        self.say(f"epoch {plan.epoch + 1}/{cfg.epochs}: {done} steps in {secs:.1f} s "
                 f"({seen / max(secs, 1e-9):.2f} images/s), mean loss {float(sums[0]) / max(done, 1):.4f}")
        return step

    def _gather_errors(self, errors: List[Tuple[str, str]]) -> None:
        if self.ctx.enabled:
            box: List[Any] = [None] * self.ctx.world
            torch.distributed.all_gather_object(box, errors)
            errors = [e for part in box for e in part]
        self._note_skipped(errors)

    @torch.no_grad()
    def _validate(self, lift: torch.nn.Module, src, epoch: int) -> Dict[str, float]:
        """Mean cosine to the target features, LiFT vs bilinear vs nearest, for both pairs (all processes)."""
        if src is None:
            self.log.write("val", epoch=epoch + 1, note="no validation images")
            return {}
        ctx, cfg = self.ctx, self.cfg
        lift.eval()
        metrics = PairMetrics(self.centers)
        mine = list(range(ctx.rank, len(src), ctx.world))
        bsz = max(1, cfg.batch_size // ctx.world)
        chunks = [[(i, 0) for i in mine[s:s + bsz]] for s in range(0, len(mine), bsz)]
        errors: List[Tuple[str, str]] = []
        t0 = time.time()
        for targets, errs in src.iterate(chunks):
            errors += errs
            if targets is not None:
                with self.autocast():
                    validate_batch(lift, targets, metrics)
        lift.train()
        all_reduce_(metrics.sums, ctx)
        self._gather_errors(errors)
        res = metrics.result()
        self.log.write("val", epoch=epoch + 1, seconds=round(time.time() - t0, 2), **res)
        self.say("val epoch {}: mean cos to the 2x target  S/2->S: LiFT {:.4f} | bilinear {:.4f} | nearest {:.4f}   "
                 "S/4->S/2: LiFT {:.4f} | bilinear {:.4f} | nearest {:.4f}".format(
                     epoch + 1, res["half/lift"], res["half/bilinear"], res["half/nearest"],
                     res["quarter/lift"], res["quarter/bilinear"], res["quarter/nearest"]))
        self.say("val epoch {}: centred cos (the discriminative part)  S/2->S: LiFT {:.4f} | bilinear {:.4f} | "
                 "nearest {:.4f}   S/4->S/2: LiFT {:.4f} | bilinear {:.4f} | nearest {:.4f}".format(
                     epoch + 1, res["half/lift_centered"], res["half/bilinear_centered"],
                     res["half/nearest_centered"], res["quarter/lift_centered"],
                     res["quarter/bilinear_centered"], res["quarter/nearest_centered"]))
        return res

    MEAN_IMAGES_LIVE = 64

    @torch.no_grad()
    def _target_means(self, src, channels: int) -> Dict[str, torch.Tensor]:
        """Mean target features over the training images (all of them from a cache, the first
        :attr:`MEAN_IMAGES_LIVE` otherwise); the same on every process, so deterministic across resumes."""
        n = len(src) if isinstance(src, _CachedSource) else min(len(src), self.MEAN_IMAGES_LIVE)
        bsz = max(1, self.cfg.batch_size)
        means = TargetMeans(channels)
        for targets, _ in src.iterate([[(i, 0) for i in range(s, min(n, s + bsz))] for s in range(0, n, bsz)]):
            if targets is not None:
                means.update(targets)
        return means.result()
