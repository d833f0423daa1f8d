"""Training-state checkpoints: atomic writes, resume from the newest intact one, every RNG state.

A checkpoint is a torch file ``<output_dir>/checkpoints/step_<step:09d>.pt`` holding only tensors, numbers, strings,
lists and dicts, so it loads with ``torch.load(..., weights_only=True)`` (no pickled code runs):

    format      "liftkit.train_state/1"
    identity    what the run trains (backbone, weights digest, layer, facet, channel order, S, pairs, loss, batch,
                seed, data digest...): resuming with other values is refused (:func:`check_identity`)
    model       the LiFT state dict;  optimizer  the Adam state dict;  scaler  the fp16 GradScaler state (or {})
    epoch       the epoch in progress;  batch  batches of it already consumed;  step  optimiser steps so far
    rng         python / numpy / torch CPU / CUDA generator states (:func:`capture_rng_state`)
    extra       JSON-able run bookkeeping (skipped files, last validation metrics)

Writes go to a temporary file in the same folder, are fsynced, then renamed over the final name (``os.replace`` is
atomic), so a crash at any moment leaves either the previous checkpoints or the new one, never a torn file; stale
temporary files are ignored and removed on resume.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from liftkit.errors import CheckpointError, unreadable_file_message

STATE_FORMAT = "liftkit.train_state/1"
_NAME = re.compile(r"^step_(\d{9})\.pt$")


# ----------------------------------------------------------------------------------------------------- RNG
def capture_rng_state() -> Dict[str, Any]:
    """Every global RNG state, as tensors / numbers (``weights_only``-loadable)."""
    version, state, gauss = random.getstate()
    np_state = np.random.get_state(legacy=True)
    out: Dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(state, dtype=torch.int64),
                   "gauss": None if gauss is None else float(gauss)},
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        # the current CUDA device only (under DDP each process owns one device; touching all would create contexts)
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }
    return out


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state((nps["name"], nps["keys"].numpy().astype(np.uint32), int(nps["pos"]), int(nps["has_gauss"]),
                         float(nps["cached_gaussian"])))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda[0])


# ----------------------------------------------------------------------------------------------------- files
def checkpoint_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"step_{int(step):09d}.pt"


def list_checkpoints(folder: Path) -> List[Tuple[int, Path]]:
    """(step, path) of every checkpoint file in ``folder``, oldest first (temporary files excluded)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def temp_files(folder: Path) -> List[Path]:
    """Leftover temporary files of interrupted writes."""
    folder = Path(folder)
    return sorted(p for p in folder.glob(".*.tmp")) if folder.is_dir() else []


def atomic_torch_save(obj: Dict[str, Any], path: Path, before_replace: Optional[Callable[[Path], None]] = None) -> Path:
    """``torch.save`` to a temporary file next to ``path``, fsync, then ``os.replace`` it onto ``path``.

    Args:
        before_replace: test hook called with the temporary path between the write and the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    if before_replace is not None:
        before_replace(tmp)
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """Load one checkpoint with ``weights_only=True``; CheckpointError if it is unreadable or not ours."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(unreadable_file_message(
            "checkpoint", path, exc, "delete it to start again, or resume from another checkpoint")) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"'{path}' is not a liftkit training checkpoint")
    return state


def find_latest(folder: Path) -> Tuple[Optional[Path], Optional[Dict[str, Any]], List[str]]:
    """The newest checkpoint that loads, as (path, state, notes); notes name the newer files that could not be read.

    Returns (None, None, notes) when there is none.
    """
    notes: List[str] = []
    for _, path in reversed(list_checkpoints(folder)):
        try:
            return path, load_checkpoint(path), notes
        except CheckpointError as exc:
            notes.append(str(exc))
    return None, None, notes


def prune_checkpoints(folder: Path, keep: int) -> List[Path]:
    """Delete all but the ``keep`` newest checkpoints (``keep <= 0``: keep all); returns the deleted paths."""
    if keep <= 0:
        return []
    old = list_checkpoints(folder)[:-keep]
    for _, p in old:
        try:
            p.unlink()
        except OSError:
            pass
    return [p for _, p in old]


# ----------------------------------------------------------------------------------------------------- identity
def check_identity(saved: Dict[str, Any], current: Dict[str, Any], where: Path) -> None:
    """Refuse to resume a run whose identity differs (one-line CheckpointError naming the first difference, in the
    saved dict's order: put the most telling keys, e.g. the backbone, first)."""
    for key in list(saved) + [k for k in current if k not in saved]:
        a, b = saved.get(key), current.get(key)
        if a != b:
            raise CheckpointError(
                f"cannot resume from '{where}': it was trained with {key}={a!r} but this run has {key}={b!r}; "
                f"use the same settings or another --output_dir"
            )
