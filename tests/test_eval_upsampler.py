"""eval_upsampler (liftkit/cli/eval_upsampler.py, through the checkout's thin eval_upsampler.py): bad input (one line
each), the rows' features (one ``ViTExtractor.features`` dispatch), the reconstruction measure on hand-made maps, and
a small end-to-end run with a labelled LiFT file on the real subsets."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from liftkit.errors import ConfigError
from liftkit.eval import reconstruction as rc
from liftkit.eval.upsamplers import Row, check_unique, parse_lift_paths, row_features
from liftkit.methods import Method
from tests.conftest import ROOT

SHIPPED = ROOT / "liftkit" / "pretrained" / "lift_dinov2_vits14_imgfocus.safetensors"


def _run(capsys, argv):
    import eval_upsampler
    from liftkit.cli.eval_upsampler import main

    assert eval_upsampler.main is main  # the checkout's script is a thin entry point
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.parametrize("argv,message", [
    (["--probes", "recon,speed"], "error: --probes 'recon,speed': choose from recon, corr, boundary, spair, davis, "
                                  "tokencut"),
    (["--methods", "low,cubic"], "error: unknown method 'cubic'; choose from low, bilinear, nearest, highres, jbu, "
                                 "lift, lift2, lift3 (liftK for K iterations)"),
    (["--methods", "low,lift,low"], "error: --methods low,lift,low: low listed twice"),
    (["--lift_paths", "a.safetensors"], "error: --lift_paths entry 'a.safetensors' is not label=path; e.g. "
                                        "--lift_paths attend=runs/a.safetensors"),
    (["--lift_paths", "a=/nonexistent/x.safetensors"], "error: --lift_paths: the file of 'a', "
                                                      "'/nonexistent/x.safetensors', does not exist"),
    (["--lift_paths", f"a={SHIPPED},a={SHIPPED}"], "error: --lift_paths: label 'a' is used twice"),
    (["--imsize", "100"], "error: --load_size (--imsize) 100: must be a positive multiple of the 14-px patch"),
    (["--load_size", "100"], "error: --load_size (--imsize) 100: must be a positive multiple of the 14-px patch"),
    (["--methods", "low,lift", "--lift_path", "none"], "error: --methods lift needs a LiFT but --lift_path is none: "
                                                       "pass --lift_path FILE (or auto), train one with train_lift.py, "
                                                       "or drop them from --methods"),
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
    lift2 = Row.builtin(Method.parse("lift2"))
    assert (lift2.label, lift2.kind, lift2.iterations, lift2.scale) == ("lift2", "lift", 2, 4)
    assert Row.builtin(Method.parse("low")).scale == 1 and Row.builtin(Method.parse("highres2")).scale == 4
    assert Row("a@2", None, 2, source="x").scale == 4 and Row("a", None, 1, source="x").kind == "lift"
    with pytest.raises(ConfigError, match="row 'lift' is listed twice"):
        check_unique([Row.builtin(Method.parse("lift")), Row("lift", None, 1, source="x")])


def test_row_features_are_the_extractors_one_pass(imgfocus, monkeypatch):
    from extractor import ViTExtractor

    ext = ViTExtractor("dinov2_vits14_imgfocus", lift_path=SHIPPED)
    x = torch.randn(1, 3, 56, 70)
    view = copy.copy(ext)
    view.load_lift(SHIPPED)
    names = ("low", "bilinear", "nearest", "highres", "lift", "lift2")
    rows = [Row.builtin(Method.parse(n)) for n in names]
    rows += [Row("file", None, 1, view, str(SHIPPED)), Row("file@2", None, 2, view, str(SHIPPED))]
    passes = []
    real = ViTExtractor.extract_descriptors
    monkeypatch.setattr(ViTExtractor, "extract_descriptors", lambda self, im: passes.append(im.shape) or real(self, im))
    feats = row_features(ext, x, rows)
    assert passes == [(1, 3, 56, 70), (1, 3, 112, 140)]  # one pass for all rows, one for highres
    for name in names:
        torch.testing.assert_close(feats[name], ext.dense_features(x, name), rtol=0, atol=0)
    torch.testing.assert_close(feats["file"], feats["lift"], rtol=0, atol=0)
    torch.testing.assert_close(feats["file@2"], feats["lift2"], rtol=0, atol=0)
    assert feats["lift2"].shape == (1, 384, 16, 20) and list(feats) == [r.label for r in rows]
    passes.clear()  # file rows without a low row: the backbone map is added to the same single pass
    only = row_features(ext, x, [Row.builtin(Method.parse("lift")), Row("file", None, 1, view, str(SHIPPED))])
    assert passes == [(1, 3, 56, 70)] and list(only) == ["lift", "file"]
    torch.testing.assert_close(only["file"], feats["lift"], rtol=0, atol=0)


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
    assert r["run"]["command"] == "eval_upsampler" and r["run"]["args"]["load_size"] == 112
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


def test_a_failed_sub_evaluation_exits_1_with_the_list(imgfocus, tmp_path, capsys, monkeypatch):
    from liftkit.cli import eval_tokencut

    seen = []
    monkeypatch.setattr(eval_tokencut, "main", lambda argv: seen.append(argv) or 2)  # fails before writing results
    code, out, err = _run(capsys, ["--offline", "--output_dir", str(tmp_path / "o"), "--probes", "tokencut",
                                   "--methods", "low,lift", "--load_size", "112", "--device", "cpu"])
    assert code == 1 and "tokencut: eval_tokencut run 0 exited 2 without results" in err
    argv = seen[0]  # the sub-command gets the shared flag names
    assert argv[argv.index("--data_root") + 1].endswith("VOC2007/VOCdevkit/VOC2007") and "--dataroot" not in argv
    assert argv[argv.index("--load_size") + 1] == "112" and argv[argv.index("--methods") + 1] == "low,lift"
    r = json.loads((tmp_path / "o" / "results.json").read_text())
    assert r["run"]["command"] == "eval_upsampler" and r["tokencut"]["error"] and "| low |" in out
