"""Training state on disk: writing a resumable checkpoint, and restoring the newest intact one on ``--resume``.

A checkpoint holds the run's identity (backbone, data digest, recipe: a checkpoint of another run is refused), LiFT,
the optimiser and scaler, the position (epoch, batches consumed, step), every RNG state and the last validation.
Writes are atomic (temporary file, then rename), so a process killed at any moment leaves the previous checkpoint
intact and at most one temporary file, which resuming removes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Tuple

from liftkit.train import checkpointing as ckpt
from liftkit.train.runlog import json_safe


def save_state(trainer, ckpt_dir: Path, identity: Dict[str, Any], pairs, opt, scaler, epoch: int, batch: int,
               step: int, last_val: Dict[str, float]) -> None:
    """Write the training checkpoint of ``step`` (rank 0 only) and prune old ones; ``trainer.hooks`` may act between
    the write and the rename."""
    if not trainer.ctx.is_main:
        return
    hook = trainer.hooks.before_checkpoint_replace
    state = {
        "format": ckpt.STATE_FORMAT, "identity": identity,
        "model": {k: v.detach().cpu() for k, v in pairs.lift.state_dict().items()},
        "optimizer": opt.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "epoch": epoch, "batch": batch, "step": step, "rng": ckpt.capture_rng_state(),
        "extra": json.dumps(json_safe({"val": last_val, "skipped": trainer.skipped, "world": trainer.ctx.world})),
    }
    ckpt.atomic_torch_save(state, ckpt.checkpoint_path(ckpt_dir, step),
                           before_replace=(lambda tmp: hook(step, tmp)) if hook is not None else None)
    ckpt.prune_checkpoints(ckpt_dir, trainer.cfg.keep_checkpoints)


def resume(trainer, ckpt_dir: Path, identity: Dict[str, Any], pairs, opt, scaler) -> Tuple[int, int, int, dict]:
    """Load the newest intact checkpoint into ``pairs``/``opt``/``scaler`` and the RNGs; returns (epoch, batches of
    it consumed, step, last validation), all zero/empty when there is none (a fresh start)."""
    cfg, ctx, say = trainer.cfg, trainer.ctx, trainer.say
    for t in ckpt.temp_files(ckpt_dir):
        if ctx.is_main:
            t.unlink(missing_ok=True)
            say(f"removed the leftover temporary file {t.name} of an interrupted checkpoint write")
    path, state, notes = ckpt.find_latest(ckpt_dir)
    for n in notes:
        say(f"warning: {n}; using an older checkpoint")
    if state is None:
        say(f"--resume: no checkpoint in '{ckpt_dir}', starting from scratch")
        return 0, 0, 0, {}
    ckpt.check_identity(state["identity"], identity, path)
    pairs.lift.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    for g in opt.param_groups:
        g["lr"] = cfg.lr
    if state.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    epoch, batch_in_epoch, step = int(state["epoch"]), int(state["batch"]), int(state["step"])
    extra = json.loads(state.get("extra", "{}"))
    for k, v in extra.get("skipped", {}).items():
        trainer.skipped.setdefault(k, v)
    ckpt.restore_rng_state(state["rng"])
    trainer.log.write("resume", checkpoint=str(path), epoch=epoch, batch=batch_in_epoch, step=step)
    say(f"resumed from {path} (epoch {epoch + 1}, batch {batch_in_epoch}, step {step})")
    return epoch, batch_in_epoch, step, extra.get("val", {})


def init_from_lift(trainer, lift) -> None:
    """Load the weights of the LiFT file ``--init_lift`` into ``lift``, after checking that it was trained for this
    backbone setup (:func:`~liftkit.lift.checkpoint.check_compatible`) with the same arch and head."""
    from liftkit.errors import ConfigError
    from liftkit.lift.checkpoint import check_compatible, load_lift

    path, ext = trainer.cfg.init_lift, trainer.ext
    src, meta = load_lift(Path(path))
    check_compatible(meta, ext.spec.name, ext.info.weights_sha256, int(ext.layer), ext.facet, ext.channel_order,
                     int(ext.embed_dim), str(path))
    ours = (lift.arch, lift.head, lift.kernel if lift.head == "attend" else None)
    theirs = (src.arch, src.head, src.kernel if src.head == "attend" else None)
    if ours != theirs:
        raise ConfigError(f"--init_lift '{path}' is a LiFT with arch/head/kernel {theirs} but this run trains {ours}; "
                          "pass the same --arch/--head/--head_kernel")
    lift.load_state_dict(src.state_dict(), strict=True)
    trainer.say(f"starting from the weights of {path}")
