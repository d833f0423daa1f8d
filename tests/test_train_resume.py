"""Kill-and-resume: a training run SIGKILLed mid-epoch, then again between a checkpoint's write and its rename,
and resumed each time, ends bit-identical (torch.equal) to a run that was never interrupted.

Real subprocesses (``python train_lift.py``), a tiny random ViT-S/16 at S=64, augmentations on (colour jitter, flips,
random crops), so the data order, the augmentation draws, the model, Adam's moments and the BatchNorm statistics all
have to be restored exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from liftkit.lift.checkpoint import load_lift
from tests.conftest import SHARED_DATA, require_shared_data

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = SHARED_DATA / "imagenet-sample-images"


def _run(args, extra_env=None):
    """train_lift.py in a subprocess; ``--kill_*`` flags go to tests/kill_train.py, which installs kill callbacks."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.update(extra_env or {})
    script = "tests/kill_train.py" if any(a.startswith("--kill_") for a in args) else "train_lift.py"
    return subprocess.run([sys.executable, str(ROOT / script)] + args, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _weights(out: Path):
    lift, _ = load_lift(out / "lift_dino_vits16.safetensors")
    return lift.state_dict()


def test_sigkill_at_any_moment_then_resume_is_bit_identical(tmp_path):
    require_shared_data(SAMPLES)
    data = tmp_path / "imgs"
    data.mkdir()
    for n in sorted(p.name for p in SAMPLES.iterdir())[100:108]:
        (data / n).symlink_to(SAMPLES / n)
    # 8 images, batch 2 -> 4 steps per epoch, 2 epochs; checkpoints every 2 steps
    args = ["--data_root", str(data), "--model_type", "dino_vits16", "--random_init", "--imsize", "64",
            "--batch_size", "2", "--epochs", "2", "--save_every", "2", "--val_fraction", "0", "--augment", "--hflip",
            "--random_crop", "--no_progress", "--seed", "7"]

    ref = tmp_path / "ref"
    r = _run(args + ["--output_dir", str(ref), "--num_workers", "1"])
    assert r.returncode == 0, r.stderr

    run = tmp_path / "run"
    # 1) killed right after step 3 (its checkpoint of step 2 is the newest), mid-epoch
    r = _run(args + ["--output_dir", str(run), "--num_workers", "0", "--kill_after_steps", "3"])
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*.pt")) == ["step_000000002.pt"]
    # 2) resumed, then killed between writing the checkpoint of step 6 and renaming it into place
    r = _run(args + ["--output_dir", str(run), "--num_workers", "0", "--resume", "--kill_in_save_at_step", "6"])
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert "resumed from" in r.stderr and "step 2)" in r.stderr
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step_*.pt"))
    assert ckpts[-1] == "step_000000004.pt" and len(list((run / "checkpoints").glob(".*.tmp"))) == 1
    # 3) resumed from the intact step-4 checkpoint (the torn write is ignored and cleaned up), runs to the end
    r = _run(args + ["--output_dir", str(run), "--num_workers", "0", "--resume"])
    assert r.returncode == 0, r.stderr
    assert "step 4)" in r.stderr and not list((run / "checkpoints").glob(".*.tmp"))

    a, b = _weights(ref), _weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the step losses of the interrupted run, last occurrence per step, equal the reference's
    def losses(out):
        rec = {}
        for line in (out / "log.jsonl").read_text().splitlines():
            e = json.loads(line)
            if e["event"] == "step":
                rec[e["step"]] = e["loss"]
        return rec

    assert losses(ref) == losses(run) and len(losses(ref)) == 8
