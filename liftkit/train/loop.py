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

The pieces: settings in :mod:`liftkit.train.config`, target sources in :mod:`liftkit.train.sources`, the run log in
:mod:`liftkit.train.runlog`, checkpoint writing and resuming in :mod:`liftkit.train.restore`.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from liftkit.errors import CheckpointError, ConfigError, LiftKitError
from liftkit.lift.checkpoint import LiftMeta, save_lift
from liftkit.lift.model import LiFT
from liftkit.specs import get_spec
from liftkit.device import resolve_device
from liftkit.train import checkpointing as ckpt
from liftkit.train import restore
from liftkit.train.config import AMP_MODES, TrainConfig, TrainHooks, validate_config  # noqa: F401 (re-exported)
from liftkit.train.data import Augment, EpochPlan, ImageFolderData, listing_digest
from liftkit.train.views import ViewsData
from liftkit.train.distributed import (
    all_reduce_,
    barrier,
    broadcast_object,
    convert_batchnorm,
    ddp_wrap,
    init_distributed,
    shutdown_distributed,
)
from liftkit.train import matching
from liftkit.train.objective import LiftPairs, PairMetrics, TargetMeans, pair_losses, validate_batch
from liftkit.train.runlog import JsonlLog, NullBar, ProgressFactory, json_safe
from liftkit.train.sources import (
    CachedSource, LiveSource, cached_source, list_training_images, path_rows, valid_rows,
)


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
        hooks: callbacks into the run (:class:`~liftkit.train.config.TrainHooks`; tests install them).
        provenance: what started the run (command, version, git commit, arguments): logged and kept in LiFT files.
    """

    def __init__(self, cfg: TrainConfig, extractor_factory: Callable[[TrainConfig, torch.device], Any],
                 say: Callable[[str], None] = lambda s: None, progress: Optional[ProgressFactory] = None,
                 hooks: Optional[TrainHooks] = None, provenance: Optional[Dict[str, Any]] = None):
        self.cfg = cfg
        self.provenance = provenance or {}
        self.hooks = hooks or TrainHooks()
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
        return NullBar()

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
        self.log.write("config", args=asdict(cfg), world_size=ctx.world, device=str(self.device), run=self.provenance)

        # ---- data
        p = get_spec(cfg.model_type).patch_size
        listed, usable, bad, train_paths, val_paths = list_training_images(cfg, p, self.say)
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
            "augment": cfg.augment, "hflip": cfg.hflip, "random_crop": cfg.random_crop, **cfg.recipe_identity(),
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
                train_src = cached_source(self, all_ds, "data_root", all_ds.rows(train_paths))
                val_src = CachedSource(train_src.cache, valid_rows(train_src.cache, all_ds.rows(
                    val_paths, all_views=False)), self.device) if val_paths and not cfg.val_root else None
            else:
                all_ds = ImageFolderData(usable, cfg.imsize, ext.spec.mean, ext.spec.std, p, cfg.resize, Augment())
                train_src = cached_source(self, all_ds, "data_root", path_rows(all_ds.paths, train_paths))
                val_src = None
                if val_paths and not cfg.val_root:
                    val_src = CachedSource(train_src.cache, valid_rows(
                        train_src.cache, path_rows(all_ds.paths, val_paths)), self.device)
            if val_paths and cfg.val_root:
                val_src = cached_source(self, val_ds, "val_root", path_rows(val_ds.paths, val_paths))
        else:
            train_src = LiveSource(train_ds, range(len(train_paths)), ext.extract_descriptors, cfg.downsample,
                                    self.device, cfg.num_workers, self.autocast)
            val_src = LiveSource(val_ds, range(len(val_paths)), ext.extract_descriptors, cfg.downsample,
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
        if cfg.init_lift:
            restore.init_from_lift(self, lift)
        pairs: torch.nn.Module = LiftPairs(lift)
        if ctx.enabled:
            pairs = convert_batchnorm(pairs, self.device)
        pairs = pairs.to(self.device)
        opt = torch.optim.Adam(pairs.parameters(), lr=cfg.lr)
        scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")
        epoch, batch_in_epoch, step, last_val = 0, 0, 0, {}
        if cfg.resume:
            epoch, batch_in_epoch, step, last_val = restore.resume(self, ckpt_dir, identity, pairs, opt, scaler)
        model = ddp_wrap(pairs, ctx, self.device)

        def save_state(ep: int, b: int, st: int) -> None:
            restore.save_state(self, ckpt_dir, identity, pairs, opt, scaler, ep, b, st, last_val)

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
        args = asdict(self.cfg)
        means = {k: [round(float(x), 6) for x in v.flatten()] for k, v in self.centers.items()}
        return json_safe({"args": args, "data": dict(summary, n_skipped=len(self.skipped)),
                           "epochs_done": epochs_done, "steps": step, "val": val, "world_size": self.ctx.world,
                           "target_mean": means, "run": self.provenance})

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
            stats = torch.zeros(5, dtype=torch.float64)
            if n_min > 0:
                match = matching.add_views(targets, self.ext, cfg, step, ctx.rank, self.autocast)  # None: off
                with self.autocast():
                    loss, parts = pair_losses(model, targets, cfg.loss, self.centers, match)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                stats = torch.tensor([float(loss.detach()), float(parts["half"].detach()),
                                      float(parts["quarter"].detach()),
                                      float(parts["match"].detach()) if "match" in parts else 0.0, n_local],
                                     dtype=torch.float64)
            all_reduce_(stats, ctx)
            step += 1
            seen += int(stats[4])
            if n_min > 0:
                mean = (stats[:4] / ctx.world).tolist()
                sums += torch.tensor(mean[:3], dtype=torch.float64)
                self.log.write("step", epoch=plan.epoch + 1, batch=b + 1, step=step, loss=mean[0], loss_half=mean[1],
                               loss_quarter=mean[2], **({"loss_match": mean[3]} if cfg.match_weight > 0 else {}),
                               images=int(stats[4]))
                bar.set_postfix_str(f"loss {mean[0]:.4f}")
            else:
                self.log.write("step_skipped", epoch=plan.epoch + 1, batch=b + 1, step=step,
                               reason="a process had no readable image in its part of the batch")
            bar.update(1)
            if self.hooks.after_step is not None:
                self.hooks.after_step(step)
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
        n = len(src) if isinstance(src, CachedSource) else min(len(src), self.MEAN_IMAGES_LIVE)
        bsz = max(1, self.cfg.batch_size)
        means = TargetMeans(channels)
        for targets, _ in src.iterate([[(i, 0) for i in range(s, min(n, s + bsz))] for s in range(0, n, bsz)]):
            if targets is not None:
                means.update(targets)
        return means.result()
