"""Multi-process training on CPU (gloo): the cross-rank BatchNorm equals BatchNorm on the whole batch, and
``python -m torch.distributed.run --nproc_per_node 2 train_lift.py`` matches a 1-process run on the same global batch.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from liftkit.lift.checkpoint import load_lift
from liftkit.lift.model import LiFT
from liftkit.train.distributed import CrossRankBatchNorm2d, convert_batchnorm
from tests.conftest import SHARED_DATA, require_shared_data, run_script

SAMPLES = SHARED_DATA / "imagenet-sample-images"


def _bn_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    x = torch.randn(6, 4, 5, 5) * 3 + 1
    r = torch.randn(6, 4, 5, 5)
    ref = nn.BatchNorm2d(4)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-1, 1)
    bn = convert_batchnorm(nn.Sequential(ref), torch.device("cpu"))[0]
    assert isinstance(bn, CrossRankBatchNorm2d)
    part = slice(rank * 3, rank * 3 + 3)
    xl = x[part].clone().requires_grad_(True)
    y = bn(xl)
    (y * r[part]).sum().backward()
    torch.save({"y": y.detach(), "gx": xl.grad, "gw": bn.weight.grad, "gb": bn.bias.grad,
                "rm": bn.running_mean, "rv": bn.running_var}, os.path.join(out_dir, f"r{rank}.pt"))
    dist.destroy_process_group()


def test_cross_rank_batchnorm_equals_batchnorm_on_the_global_batch(tmp_path):
    init = tempfile.mktemp(dir=tmp_path)
    mp.spawn(_bn_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"r{i}.pt", weights_only=True) for i in range(2))
    torch.manual_seed(0)
    x = (torch.randn(6, 4, 5, 5) * 3 + 1).requires_grad_(True)
    r = torch.randn(6, 4, 5, 5)
    ref = nn.BatchNorm2d(4)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-1, 1)
    y = ref(x)
    (y * r).sum().backward()
    assert torch.allclose(torch.cat([r0["y"], r1["y"]]), y, atol=1e-5)
    assert torch.allclose(torch.cat([r0["gx"], r1["gx"]]), x.grad, atol=1e-5)  # gradients through the statistics
    assert torch.allclose(r0["gw"] + r1["gw"], ref.weight.grad, atol=1e-4)
    assert torch.allclose(r0["gb"] + r1["gb"], ref.bias.grad, atol=1e-4)
    for rk in (r0, r1):  # running statistics (unbiased variance) identical on both ranks and to BatchNorm2d's
        assert torch.allclose(rk["rm"], ref.running_mean, atol=1e-6)
        assert torch.allclose(rk["rv"], ref.running_var, atol=1e-5)


def _train(args, out: Path, nproc: int):
    r = run_script("train_lift.py", args + ["--output_dir", str(out)], nproc)
    assert r.returncode == 0, r.stderr[-3000:]
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    lift, meta = load_lift(out / "lift_dino_vits16.safetensors")
    return log, lift.state_dict(), meta, r.stderr


def test_two_processes_match_one_on_the_same_global_batch(tmp_path):
    require_shared_data(SAMPLES)
    data = tmp_path / "imgs"
    data.mkdir()
    for n in sorted(p.name for p in SAMPLES.iterdir())[200:210]:
        (data / n).symlink_to(SAMPLES / n)
    args = ["--data_root", str(data), "--model_type", "dino_vits16", "--random_init", "--imsize", "64",
            "--batch_size", "4", "--epochs", "2", "--val_fraction", "0.2", "--num_workers", "0", "--no_progress"]
    log1, w1, meta1, _ = _train(args, tmp_path / "one", 1)
    log2, w2, meta2, err2 = _train(args, tmp_path / "two", 2)
    assert meta2.train_config["world_size"] == 2
    assert err2.count("wrote ") == 1  # rank 0 alone writes and reports

    steps1 = [e for e in log1 if e["event"] == "step"]
    steps2 = [e for e in log2 if e["event"] == "step"]
    assert len(steps1) == len(steps2) == 4 and len(log2) == len({json.dumps(e) for e in log2})  # one writer
    # step 1 starts from identical weights: equal losses means the global batch and the global BatchNorm statistics
    assert steps2[0]["loss"] == pytest.approx(steps1[0]["loss"], abs=1e-5)
    for a, b in zip(steps1, steps2):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
        assert a["images"] == b["images"] == 4
    # Weights: tight, except the conv biases that feed a BatchNorm (their true gradient is exactly 0, BN removes
    # any per-channel shift, so Adam turns float noise into +-lr steps) and the running means that track them.
    null_grad = {f"image_convs_{a}.{b}.bias" for a, b in (("1", "0"), ("1", "3"), ("2", "0"))}
    null_grad |= {f"image_convs_{a}.{b}.running_mean" for a, b in (("1", "1"), ("1", "4"), ("2", "1"))}
    for k in w1:
        if not w1[k].is_floating_point():
            assert torch.equal(w1[k], w2[k]), k  # num_batches_tracked
        elif k not in null_grad:
            assert torch.allclose(w1[k], w2[k], atol=5e-4), (k, (w1[k] - w2[k]).abs().max())
    # ...and the same function: in train mode (batch statistics) those biases cancel exactly
    m1, m2 = LiFT(384, 16), LiFT(384, 16)
    m1.load_state_dict(w1)
    m2.load_state_dict(w2)
    torch.manual_seed(0)
    f, im = torch.randn(3, 384, 4, 4), torch.randn(3, 3, 64, 64)
    o1, o2 = m1.train()(f, im), m2.train()(f, im)
    assert (o1 - o2).abs().max() < 1e-3 * o1.abs().max()
    v1 = [e for e in log1 if e["event"] == "val"][-1]
    v2 = [e for e in log2 if e["event"] == "val"][-1]
    for key in ("half/lift", "half/bilinear", "quarter/lift", "quarter/nearest"):
        assert v2[key] == pytest.approx(v1[key], abs=1e-4)  # validation sharded over the ranks, then all-reduced

    # the feature cache built by two processes (each computes every other chunk) trains the same LiFT, up to the
    # float16 rounding of the cached targets
    log3, w3, _, _ = _train(args + ["--cache_dir", str(tmp_path / "cache")], tmp_path / "three", 2)
    built = [e for e in log3 if e["event"] == "cache_built"]
    assert [(e["split"], e["images"]) for e in built] == [("data_root", 10)]  # one cache; train/val are row sets
    steps3 = [e for e in log3 if e["event"] == "step"]
    for a, c in zip(steps1, steps3):
        assert c["loss"] == pytest.approx(a["loss"], abs=3e-3)
    # and its rows are exactly the float16 targets of the listing's images, in order
    from extractor import ViTExtractor
    from liftkit.train.data import ImageFolderData, listing_digest
    from liftkit.train.objective import make_targets

    ext = ViTExtractor("dino_vits16", random_init=True, lift_path=None)
    every = sorted(data.iterdir())
    ds = ImageFolderData(every, 64, ext.spec.mean, ext.spec.std, 16)
    x = torch.stack([ds[(i, 0)]["image"] for i in range(len(ds))])
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    want = make_targets(ext.extract_descriptors, x)
    torch.set_num_threads(n)
    folder = Path(built[0]["dir"])
    assert json.loads((folder / "key.json").read_text())["fields"]["listing"] == listing_digest(every)
    for name, t in want.items():
        got = torch.from_numpy(np.load(folder / f"{name}.npy")).float()
        assert torch.allclose(got, t, atol=2e-3, rtol=2e-3), name
