"""liftkit.train.checkpointing: RNG states, atomic writes, picking the newest intact checkpoint, identity checks."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from liftkit.errors import CheckpointError
from liftkit.train import checkpointing as ck


def _draws():
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(), torch.rand(4).tolist())


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leave a cached gaussian in python's state
    np.random.randn()
    state = ck.capture_rng_state()
    expected = _draws()
    path = ck.atomic_torch_save({"format": ck.STATE_FORMAT, "rng": state}, tmp_path / "s.pt")
    _draws()  # move every generator on
    loaded = torch.load(path, weights_only=True)  # no pickled objects needed
    ck.restore_rng_state(loaded["rng"])
    assert _draws() == expected


def _state(step):
    return {"format": ck.STATE_FORMAT, "step": step, "w": torch.full((3,), float(step))}


def test_crash_between_write_and_rename_keeps_the_previous_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    ck.atomic_torch_save(_state(10), ck.checkpoint_path(folder, 10))

    class Crash(Exception):
        pass

    def die(tmp):
        assert tmp.is_file() and tmp.stat().st_size > 0  # the new state is fully written, not yet renamed
        raise Crash

    with pytest.raises(Crash):
        ck.atomic_torch_save(_state(20), ck.checkpoint_path(folder, 20), before_replace=die)
    assert not ck.checkpoint_path(folder, 20).exists()
    assert len(ck.temp_files(folder)) == 1  # the leftover temporary file...
    assert [s for s, _ in ck.list_checkpoints(folder)] == [10]  # ...is never taken for a checkpoint
    path, state, notes = ck.find_latest(folder)
    assert path == ck.checkpoint_path(folder, 10) and state["step"] == 10 and notes == []
    assert torch.equal(state["w"], torch.full((3,), 10.0))


def test_unreadable_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    ck.atomic_torch_save(_state(1), ck.checkpoint_path(tmp_path, 1))
    ck.atomic_torch_save(_state(2), ck.checkpoint_path(tmp_path, 2))
    ck.checkpoint_path(tmp_path, 3).write_bytes(ck.checkpoint_path(tmp_path, 2).read_bytes()[:50])  # torn (disk fault)
    path, state, notes = ck.find_latest(tmp_path)
    assert state["step"] == 2 and len(notes) == 1 and "step_000000003.pt" in notes[0]
    assert ck.find_latest(tmp_path / "nothing") == (None, None, [])


def test_load_refuses_foreign_files(tmp_path):
    torch.save({"model": {}}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a liftkit training checkpoint"):
        ck.load_checkpoint(tmp_path / "x.pt")


def test_prune_keeps_the_newest(tmp_path):
    for s in (5, 1, 3, 9):
        ck.atomic_torch_save(_state(s), ck.checkpoint_path(tmp_path, s))
    deleted = ck.prune_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in deleted) == ["step_000000001.pt", "step_000000003.pt"]
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [5, 9]
    assert ck.prune_checkpoints(tmp_path, 0) == []


def test_identity_mismatch_names_the_first_difference(tmp_path):
    saved = {"backbone": "dino_vits16", "layer": 11, "facet": "key", "imsize": 448}
    ck.check_identity(saved, dict(saved), tmp_path)
    with pytest.raises(CheckpointError, match=r"backbone='dino_vits16' but this run has backbone='dinov2_vits14'"):
        ck.check_identity(saved, dict(saved, backbone="dinov2_vits14", layer=5), tmp_path)
    with pytest.raises(CheckpointError, match="layer=11 .* layer=5"):
        ck.check_identity(saved, dict(saved, layer=5), tmp_path)
