"""Running the official LiFT release (../shared/reference, test oracle only; never copied into the project) in tests.

* :func:`official_code` puts reference folders on ``sys.path`` for the duration of a ``with`` block only, hides our
  modules that an official file of the same name would shadow (``extractor``, ``lift_extractor``, ``eval_spair``,
  ``eval_davis``, DINO's ``utils``...), and on exit removes the folders and every module imported from the reference
  tree and restores ours: a later ``import eval_davis`` gets ours, never the official script.
* :func:`cpu_offline` makes the official scripts run here: their GPU transfer calls return the CPU object, and
  ``torch.hub.load('facebookresearch/dino:main', name)`` builds DINO from ../shared/reference/dino with a weights file
  the test made (DINO's weights do not exist offline).
* :func:`random_official_weights`: DINO ViT-S/16 in DINO's own format and an official-layout LiFT with non-trivial
  BatchNorm statistics, saved under a name that does not say its backbone.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

from tests.conftest import ROOT

REF = Path(os.environ.get("LIFTKIT_REFERENCE") or ROOT.parent / "shared" / "reference")
OFFICIAL = REF / "lift-official"
DINO = REF / "dino"


def require_reference() -> None:
    """Fail (not skip) when the reference tree is missing: the parity tests are the point of issue #13."""
    if not (OFFICIAL / "lift.py").is_file() or not (DINO / "vision_transformer.py").is_file():
        pytest.fail(f"the official reference code is missing under {REF} (see ../shared/reference/README.md)")


def _from_reference(module) -> bool:
    f = getattr(module, "__file__", None) or ""
    return bool(f) and str(Path(f).resolve()).startswith(str(REF.resolve()))


@contextlib.contextmanager
def official_code(*folders: Path):
    """``sys.path`` gets ``folders`` (default: lift-official and dino) at its front inside the block; see the module
    docstring for what is hidden and restored."""
    folders = folders or (OFFICIAL, DINO)
    added = [str(f) for f in folders if str(f) not in sys.path]
    names = {p.stem for f in folders for p in Path(f).glob("*.py")} | {p.name for f in folders for p in Path(f).iterdir()
                                                                       if (p / "__init__.py").is_file()}
    hidden = {n: sys.modules.pop(n) for n in list(sys.modules) if n.split(".")[0] in names
              and not _from_reference(sys.modules[n])}
    sys.path[:0] = added
    try:
        yield
    finally:
        for p in added:
            while p in sys.path:
                sys.path.remove(p)
        for name in [n for n, m in list(sys.modules.items()) if _from_reference(m) or n.split(".")[0] in names]:
            del sys.modules[name]
        sys.modules.update(hidden)


def load_module(name: str, path: Path):
    """Import ``path`` as module ``name`` (also registered in ``sys.modules``; call inside :func:`official_code`)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def cpu_offline(dino_weights: Path):
    """The official scripts' GPU transfers are the identity (CPU only) and torch.hub's DINO is built locally with
    ``dino_weights`` (DINO's format)."""

    real_load = torch.hub.load

    def hub_load(repo, name, *args, **kwargs):
        assert "dino" in str(repo), f"unexpected torch.hub.load({repo!r}, {name!r}) in the official code"
        model = real_load(str(DINO), name, source="local", pretrained=False)
        model.load_state_dict(torch.load(dino_weights, weights_only=True))
        return model.eval()

    with mock.patch.object(torch.Tensor, "cuda", lambda self, *a, **k: self), \
            mock.patch.object(torch.nn.Module, "cuda", lambda self, *a, **k: self), \
            mock.patch.object(torch.hub, "load", hub_load), \
            mock.patch.object(torch.cuda, "is_available", lambda: False):
        yield


def random_official_weights(folder: Path, seed: int = 0):
    """(DINO ViT-S/16 weights file in DINO's format, official-layout LiFT file) on identical random weights."""
    with official_code():
        vits = load_module("vision_transformer", DINO / "vision_transformer.py")
        off_lift = load_module("lift", OFFICIAL / "lift.py")
        torch.manual_seed(seed)
        dino = vits.vit_small(patch_size=16, num_classes=0).eval()
        with torch.no_grad():  # non-trivial norms and biases everywhere
            for p in dino.parameters():
                p.add_(0.02 * torch.randn_like(p))
        lift = off_lift.LiFT(384, 16)
        with torch.no_grad():
            for m in lift.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.normal_(1, 0.1)
                    m.bias.normal_(0, 0.1)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "dino_deitsmall16_pretrain.pth"
    torch.save(dino.state_dict(), weights)
    lift_file = folder / "my_upsampler_weights.pth"  # a name that does not say the backbone
    torch.save(lift.state_dict(), lift_file)
    return weights, lift_file
