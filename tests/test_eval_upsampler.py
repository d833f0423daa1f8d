"""eval_upsampler.py: bad input (one line each), the rows' features, the reconstruction measure on hand-made maps,
and a small end-to-end run with a labelled LiFT file on the real subsets."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from liftkit.errors import ConfigError
from liftkit.eval import reconstruction as rc
from liftkit.eval.upsamplers import Method, check_unique, method_features, parse_builtin, parse_lift_paths
from tests.conftest import ROOT

SHIPPED = ROOT / "liftkit" / "pretrained" / "lift_dinov2_vits14_imgfocus.safetensors"


def _run(capsys, argv):
    from eval_upsampler import main

    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.parametrize("argv,message", [
    (["--probes", "recon,speed"], "error: --probes 'recon,speed': choose from recon, corr, boundary, spair, davis, "
                                  "tokencut"),
    (["--methods", "low,cubic"], "error: --methods: unknown method 'cubic'; choose from low, bilinear, nearest, "
                                 "highres, lift, liftK (K iterations), bilinearK, highresK"),
    (["--lift_paths", "a.safetensors"], "error: --lift_paths entry 'a.safetensors' is not label=path; e.g. "
                                        "--lift_paths attend=runs/a.safetensors"),
    (["--lift_paths", "a=/nonexistent/x.safetensors"], "error: --lift_paths: the file of 'a', "
                                                      "'/nonexistent/x.safetensors', does not exist"),
    (["--lift_paths", f"a={SHIPPED},a={SHIPPED}"], "error: --lift_paths: label 'a' is used twice"),
    (["--imsize", "100"], "error: --imsize 100: must be a positive multiple of the 14-px patch"),
    (["--recon_imsize", "420"], "error: --recon_imsize 420: must be a multiple of 4 x 14 px (S/4 on the grid)"),
    (["--alphas", "0.01,x"], "error: --alphas '0.01,x': give comma-separated floats"),
    (["--boundary_k", "1,4"], "error: --boundary_k '1,4': every value must be in [2, 64]"),
    (["--boundary_sets", "davis,kitti"], "error: --boundary_sets 'kitti': use davis, voc07, voc12 or a VOC folder "
                                         "with SegmentationObject/"),
    (["--corr_images", ","], "error: --corr_images is empty; give e.g. coco or an image folder"),
    (["--corr_images", "/nonexistent_folder"], "error: --corr_images '/nonexistent_folder': no images (use coco, "
                                               "imagenet_val or an image folder)"),
])
def test_bad_input_is_one_line(capsys, tmp_path, argv, message):
    code, out, err = _run(capsys, ["--offline", "--output_dir", str(tmp_path / "o")] + argv)
    assert code == 2 and err.strip().splitlines()[-1] == message and out == ""


def test_lift_path_parsing_and_unique_rows():
    assert parse_lift_paths("a=x.safetensors, b = y.pth") == [("a", "x.safetensors"), ("b", "y.pth")]
    assert parse_builtin("lift2") == Method("lift2", "lift", 2) and parse_builtin("low").scale == 1
    assert parse_builtin("highres2").scale == 4
    with pytest.raises(ConfigError, match="row 'lift' is listed twice"):
        check_unique([parse_builtin("lift"), Method("lift", "lift", 1, source="x")])


def test_method_features_match_the_extractor(imgfocus):
    from extractor import ViTExtractor

    ext = ViTExtractor("dinov2_vits14_imgfocus", lift_path=SHIPPED)
    x = torch.randn(1, 3, 56, 70)
    view = copy.copy(ext)
    view.load_lift(SHIPPED)
    rows = [parse_builtin(n) for n in ("low", "bilinear", "nearest", "highres", "lift", "lift2")]
    rows.append(Method("file", "lift", 1, view, str(SHIPPED)))
    feats = method_features(ext, x, rows)
    for name in ("low", "bilinear", "nearest", "highres", "lift", "lift2"):
        torch.testing.assert_close(feats[name], ext.dense_features(x, name))
    torch.testing.assert_close(feats["file"], feats["lift"])
    assert feats["lift2"].shape == (1, 384, 16, 20)


def test_reconstruction_cosines_on_hand_made_maps():
    centre = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    target = torch.tensor([[1.0, 1.0], [2.0, 2.0]]).t().reshape(1, 2, 1, 2)  # (1,1) and (2,2)
    pred = torch.tensor([[1.0, -1.0], [2.0, 2.0]]).t().reshape(1, 2, 1, 2)   # (1,-1) and (2,2)
    raw, cen = rc.cosines(pred, target, centre)
    # location 1: raw cos((1,1),(1,-1)) = 0, centred cos((0,1),(0,-1)) = -1; location 2: 1 and 1
    assert raw == pytest.approx(0.5, abs=1e-6) and cen == pytest.approx(0.0, abs=1e-6)
    items = [{"S": torch.ones(1, 2, 2, 2), "S/2": torch.zeros(1, 2, 1, 1)},
             {"S": 3 * torch.ones(1, 2, 2, 2), "S/2": 2 * torch.ones(1, 2, 1, 1)}]
    means = rc.level_means(items)
    assert means["S"].flatten().tolist() == [2.0, 2.0] and means["S/2"].flatten().tolist() == [1.0, 1.0]
    assert rc.pairs_for_scale(2) == ["S/2->S", "S/4->S/2"] and rc.pairs_for_scale(4) == ["S/4->S"]
    assert rc.pairs_for_scale(1) == []


def test_small_end_to_end_run_with_a_labelled_lift_file(shared_data, tmp_path, capsys, one_thread):
    out_dir = tmp_path / "run"
    code, out, err = _run(capsys, [
        "--offline", "--output_dir", str(out_dir), "--limit", "2", "--probes", "recon,corr,boundary",
        "--methods", "low,bilinear,lift", "--lift_paths", f"copy={SHIPPED}", "--imsize", "112",
        "--recon_imsize", "224", "--grid", "4", "--boundary_sets", "voc07", "--boundary_k", "4", "--quiet"])
    assert code == 0, err
    r = json.loads((out_dir / "results.json").read_text())
    assert [m["label"] for m in r["methods"]] == ["low", "bilinear", "lift", "copy"]
    assert r["recon"]["images"] == 2 and r["corr"]["images"] == 2 and r["boundary"]["images"] == 2
    assert r["corr"]["per_method"]["low"]["all"]["points"] == 2 * 16
    # the labelled file is the shipped LiFT: its row equals the lift row in every probe
    assert r["recon"]["per_method"]["copy"] == r["recon"]["per_method"]["lift"]
    assert r["corr"]["per_method"]["copy"] == r["corr"]["per_method"]["lift"]
    assert r["boundary"]["per_method"]["copy"]["f_mean"] == r["boundary"]["per_method"]["lift"]["f_mean"]
    assert "low" not in r["recon"]["per_method"]  # scale 1: nothing to reconstruct
    rec = r["recon"]["per_method"]["lift"]["S/2->S"]
    assert rec["images"] == 2 and 0.9 < rec["raw"] <= 1 and 0 < rec["centred"] < rec["raw"]
    md = (out_dir / "results.md").read_text()
    assert md in out + "\n" or md.strip() in out
    assert "(n=2 img)" in md and "(n=32 pts)" in md and "copy = " in md
