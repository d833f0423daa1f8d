"""Parity with the official LiFT release (../shared/reference/lift-official, oracle only) on identical random weights:
DINO ViT-S/16 in DINO's own format and an official-layout LiFT with non-trivial BatchNorm statistics, saved under a
name that does not say its backbone. Facets (key/query/value/token at layers 0/5/11), LiFT x1/x2/x3, and
``lift_extractor --protocol official --format official`` end to end (preprocessing included) against the official
``lift_extractor.py`` computation. No network, no GPU: DINO's model is built from ../shared/reference/dino directly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import lift_extractor
from extractor import ViTExtractor
from tests.conftest import ASSETS, ROOT
from tests.official_ref import OFFICIAL, REF, cpu_offline, load_module, official_code, random_official_weights, \
    require_reference

SAMPLE = ASSETS / "sample.jpg"

pytestmark = pytest.mark.usefixtures("one_thread")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """(official ViTLiFTExtractor, DINO weights file, official LiFT file) on identical random weights."""
    require_reference()
    weights, lift_file = random_official_weights(tmp_path_factory.mktemp("official"))
    with official_code(), cpu_offline(weights):  # nothing of the official tree stays importable afterwards
        off_x = load_module("lift_extractor", OFFICIAL / "lift_extractor.py")
        ref = off_x.ViTLiFTExtractor("dino_vits16", str(lift_file), 384, 16, 16, 11, "key", device="cpu",
                                     silent=True).eval()
    return ref, weights, lift_file


def test_official_code_leaves_nothing_behind(official):
    """The official folders are off sys.path and our top-level scripts are ours again (a known bug: a later
    ``import eval_davis`` once got the official script)."""
    import eval_davis
    import extractor

    assert not any(str(OFFICIAL) in p or str(REF / "dino") in p for p in sys.path)
    assert Path(eval_davis.__file__).resolve() == ROOT / "eval_davis.py"
    assert Path(extractor.__file__).resolve() == ROOT / "extractor.py"
    assert not [n for n, m in sys.modules.items() if str(REF.resolve()) in str(getattr(m, "__file__", "") or "")]
    assert hasattr(eval_davis, "main") and not hasattr(eval_davis, "run_video_segmentation")


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
