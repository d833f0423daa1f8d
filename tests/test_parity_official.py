"""Parity with the official LiFT release (../shared/reference/lift-official, oracle only) on identical random weights:
DINO ViT-S/16 in DINO's own format and an official-layout LiFT with non-trivial BatchNorm statistics, saved under a
name that does not say its backbone. Facets (key/query/value/token at layers 0/5/11), LiFT x1/x2/x3, and
``lift_extractor --protocol official --format official`` end to end (preprocessing included) against the official
``lift_extractor.py`` computation. No network, no GPU: DINO's model is built from ../shared/reference/dino directly.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import lift_extractor
from extractor import ViTExtractor
from tests.conftest import ASSETS, ROOT

REF = Path(__import__("os").environ.get("LIFTKIT_REFERENCE") or ROOT.parent / "shared" / "reference")
SAMPLE = ASSETS / "sample.jpg"

pytestmark = pytest.mark.usefixtures("one_thread")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """(official ViTLiFTExtractor, DINO weights file, official LiFT file) on identical random weights."""
    if not (REF / "lift-official" / "lift.py").is_file() or not (REF / "dino" / "vision_transformer.py").is_file():
        pytest.fail(f"the official reference code is missing under {REF} (see ../shared/reference/README.md)")
    added = [p for p in (str(REF / "lift-official"), str(REF / "dino")) if p not in sys.path]
    before = set(sys.modules)
    sys.path[:0] = added
    try:
        return _build(tmp_path_factory)
    finally:  # leave no reference module or path behind (other tests import our own eval_davis, extractor, ...)
        for p in added:
            sys.path.remove(p)
        for name in set(sys.modules) - before:
            if str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(REF)):
                del sys.modules[name]


def _build(tmp_path_factory):
    vits = _module("dino_vision_transformer", REF / "dino" / "vision_transformer.py")
    off_lift = _module("official_lift", REF / "lift-official" / "lift.py")
    sys.modules["lift"] = off_lift  # the official lift_extractor imports `lift` and `extractor`
    sys.modules["extractor_official"] = _module("extractor_official", REF / "lift-official" / "extractor.py")
    saved = sys.modules.get("extractor")
    sys.modules["extractor"] = sys.modules["extractor_official"]
    try:
        off_x = _module("official_lift_extractor", REF / "lift-official" / "lift_extractor.py")
    finally:
        if saved is not None:
            sys.modules["extractor"] = saved
    d = tmp_path_factory.mktemp("official")
    torch.manual_seed(0)
    dino = vits.vit_small(patch_size=16, num_classes=0).eval()
    with torch.no_grad():  # non-trivial norms and biases everywhere
        for p in dino.parameters():
            p.add_(0.02 * torch.randn_like(p))
    weights = d / "dino_deitsmall16_pretrain.pth"
    torch.save(dino.state_dict(), weights)
    lift = off_lift.LiFT(384, 16)
    with torch.no_grad():
        for m in lift.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    lift_file = d / "my_upsampler_weights.pth"  # a name that does not say the backbone
    torch.save(lift.state_dict(), lift_file)
    ref = off_x.ViTLiFTExtractor("dino_vits16", str(lift_file), 384, 16, 16, 11, "key", model=dino, device="cpu",
                                 silent=True).eval()
    return ref, weights, lift_file


def test_facets_match_official(official):
    ref, weights, _ = official
    x = torch.randn(1, 3, 64, 96)
    ours = ViTExtractor("dino_vits16", backbone_weights=weights, lift_path=None)
    for facet, layer in [(f, la) for f in ("key", "query", "value", "token") for la in (0, 5, 11)]:
        ours.facet, ours.layer = facet, layer
        got = ours.extract_descriptors(x).flatten(2).transpose(1, 2)  # (1, T, C)
        with torch.no_grad():
            want = ref.extractor.extract_descriptors(x, layer, facet)[:, 0]
        assert got.shape == want.shape == (1, 24, 384)
        assert _rel(got, want) < 1e-5, (facet, layer, _rel(got, want))


def test_lift_iterations_match_official_any_file_name(official):
    ref, weights, lift_file = official
    ext = ViTExtractor("dino_vits16", backbone_weights=weights, lift_path=lift_file)
    assert ext.lift_meta.source == "official (backbone from --model_type)"
    x = torch.randn(1, 3, 64, 96)
    low = ext.extract_descriptors(x)
    ours = ext.lift_steps(low, x, 3)
    with torch.no_grad():
        for k in (1, 2, 3):
            want = ref.extract_descriptors_iterative_lift(x, k)  # (1, T', C)
            got = ours[k - 1].flatten(2).transpose(1, 2)
            assert got.shape == want.shape == (1, 24 * 4 ** k, 384)
            assert _rel(got, want) < (1e-6 if k == 1 else 5e-6), (k, _rel(got, want))


def test_lift_extractor_protocol_official_end_to_end(official, tmp_path, capsys):
    ref, weights, lift_file = official
    out = tmp_path / "sample.pth"
    rc = lift_extractor.main(["--image_path", str(SAMPLE), "--output_path", str(out), "--model_type", "dino_vits16",
                              "--backbone_weights", str(weights), "--lift_path", str(lift_file), "--lift_iter", "2",
                              "--protocol", "official", "--format", "official", "--quiet"])
    assert rc == 0
    assert "backbone taken from --model_type dino_vits16" in capsys.readouterr().err
    got = torch.load(out, weights_only=True)
    with torch.no_grad():
        batch, _ = ref.preprocess(str(SAMPLE), 224)
        want = ref.extract_descriptors_iterative_lift(batch, 2)
    assert isinstance(got, torch.Tensor) and got.shape == want.shape == (1, 14 * 21 * 16, 384)
    assert _rel(got, want) < 1e-5
    # the preprocessing alone is the official one, bit for bit
    from liftkit.data.transforms import official_normalisation, official_to_tensor
    from PIL import Image

    x = official_to_tensor(Image.open(SAMPLE).convert("RGB"), 224, *official_normalisation("dino_vits16"), 16)
    assert torch.equal(x, batch)


def test_wrong_backbone_for_an_official_file_is_refused(official, capsys):
    _, _, lift_file = official
    rc = lift_extractor.main(["--image_path", str(SAMPLE), "--model_type", "dino_vitb16", "--random_init",
                              "--lift_path", str(lift_file), "--output_dir", "/nonexistent-never-written", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") >= 1 and "error:" in err
