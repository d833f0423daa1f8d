"""IoU / CorLoc on hand-made boxes, box checks and drawings, and eval_tokencut.py end to end on the real VOC07
subset with the offline dinov2_vits14_imgfocus backbone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from liftkit.errors import DatasetError
from liftkit.eval.boxes import best_iou, box_iou, check_boxes, corloc, draw_boxes, is_correct

ROOT = Path(__file__).resolve().parents[1]
VOC07 = Path("VOC2007/VOCdevkit/VOC2007")


# ------------------------------------------------------------------------------------------------ IoU and CorLoc
def test_iou_on_hand_made_boxes():
    gt = np.array([[5, 5, 15, 15], [0, 0, 10, 10], [20, 0, 30, 10], [10, 0, 20, 10], [2, 2, 4, 4], [3, 3, 3, 8]])
    ious = box_iou((0, 0, 10, 10), gt)
    # overlap 25 / union 175; identical; disjoint; edge-touching; contained 4/100; zero-area box
    np.testing.assert_allclose(ious, [1 / 7, 1.0, 0.0, 0.0, 0.04, 0.0])
    assert box_iou((0, 0, 10, 10), np.zeros((0, 4))).shape == (0,)
    assert box_iou((1, 1, 1, 1), np.array([[1, 1, 1, 1]]))[0] == 0.0  # empty union: 0, not NaN
    assert best_iou((0, 0, 10, 10), gt) == 1.0
    assert best_iou((0, 0, 10, 10), np.zeros((0, 4))) == 0.0


def test_corloc_on_hand_made_boxes():
    preds = [(0, 0, 10, 10)] * 4
    gts = [
        np.array([[0, 0, 10, 5]]),                      # IoU exactly 0.5: counts (>=)
        np.array([[0, 0, 10, 4.9]]),                     # IoU 0.49: a miss
        np.array([[50, 50, 60, 60], [1, 1, 10, 10]]),   # the second box matches (IoU 0.81)
        np.zeros((0, 4)),                               # no ground truth: a miss
    ]
    assert [is_correct(p, g) for p, g in zip(preds, gts)] == [True, False, True, False]
    assert corloc(preds, gts) == 0.5
    assert corloc(preds[:1], gts[:1]) == 1.0
    assert corloc(preds[1:2], gts[1:2]) == 0.0
    assert corloc(preds, gts, threshold=0.8) == 0.25
    with pytest.raises(ValueError):
        corloc(preds, gts[:2])


def test_check_boxes_clips_within_tolerance_and_refuses_beyond():
    out = check_boxes(np.array([[-1, -0.5, 101, 80.5], [10, 10, 20, 20]]), 100, 80, "x.xml")
    np.testing.assert_array_equal(out, [[0, 0, 100, 80], [10, 10, 20, 20]])
    with pytest.raises(DatasetError, match=r"x\.xml: box 0 .*outside the 100x80 image"):
        check_boxes(np.array([[0, 0, 102, 10]]), 100, 80, "x.xml")
    with pytest.raises(DatasetError, match="x2 < x1"):
        check_boxes(np.array([[30, 0, 20, 10]]), 100, 80, "x.xml")
    with pytest.raises(DatasetError, match="non-finite"):
        check_boxes(np.array([[0, 0, np.nan, 10]]), 100, 80, "x.xml")


def test_draw_boxes_colours():
    img = Image.new("RGB", (100, 80), (0, 0, 0))
    out = draw_boxes(img, (10, 10, 50, 40), np.array([[60, 5, 90, 70]]))
    assert out.size == (100, 80) and img.getpixel((10, 10)) == (0, 0, 0)  # input untouched
    assert out.getpixel((10, 25)) == (255, 30, 30)   # predicted: red left edge
    assert out.getpixel((60, 40)) == (0, 220, 0)     # ground truth: green left edge
    assert out.getpixel((30, 25)) == (0, 0, 0)       # inside: unchanged


# ------------------------------------------------------------------------------------------------ the script
def _run(capsys, argv):
    from eval_tokencut import main

    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_end_to_end_voc07(shared_data, tmp_path, capsys):
    out_json = tmp_path / "r.json"
    vis = tmp_path / "vis"
    rc, out, err = _run(capsys, [
        "--dataset", "voc07", "--dataroot", str(shared_data / VOC07), "--offline", "--lift_path", "none",
        "--methods", "low,bilinear", "--facet", "value", "--load_size", "224", "--output_json", str(out_json),
        "--save_vis", str(vis), "--solver", "auto", "--tau", "0.2",
    ])
    assert rc == 0, err
    lines = err.splitlines()  # version and commit, then the resolved arguments, logged first
    assert lines[0].startswith("[eval_tokencut] liftkit 0.1.0, git commit ") and lines[1].startswith(
        '[eval_tokencut] args: {"annotations": null, "backbone_weights": null')
    r = json.loads(out_json.read_text())
    assert set(r) >= {"run", "args", "extractor", "dataset", "tau", "eps", "methods", "images", "failures"}
    assert r["run"]["command"] == "eval_tokencut" and r["run"]["liftkit_version"] == "0.1.0"
    assert r["run"]["args"]["data_root"] == str(shared_data / VOC07) and r["run"]["args"]["load_size"] == 224
    assert r["tau"] == 0.2 and r["eps"] == 1e-5 and r["failures"] == []
    assert r["dataset"]["num_images"] == 6 and r["dataset"]["num_objects"] == 18 and r["dataset"]["num_skipped"] == 0
    assert r["extractor"]["backbone"] == "dinov2_vits14_imgfocus" and r["extractor"]["facet"] == "value"
    assert [im["name"] for im in r["images"]] == ["000005", "000007", "000009", "000032", "000033", "000039"]
    for method, scale in (("low", 1), ("bilinear", 2)):
        hits = 0
        for im in r["images"]:
            res = im["results"][method]
            h, w = im["input_hw"]
            assert res["grid_hw"] == [scale * h // 14, scale * w // 14]
            x1, y1, x2, y2 = res["box"]
            assert 0 <= x1 < x2 <= im["width"] and 0 <= y1 < y2 <= im["height"]
            # the stored IoU is the best IoU of the stored box with the stored ground truth
            assert res["iou"] == pytest.approx(best_iou(res["box"], np.array(im["gt_boxes"])), abs=1e-3)
            assert res["correct"] == (res["iou"] >= 0.5)
            assert res["solver"] == ("dense" if scale * scale * h * w // 196 <= 400 else "sparse")
            hits += res["correct"]
            assert (vis / f"{im['name']}_{method}.jpg").is_file()
        s = r["methods"][method]
        assert s["num_images"] == 6 and s["num_correct"] == hits and s["corloc"] == pytest.approx(hits / 6)
        assert s["num_errors"] == 0 and s["mean_feature_s"] > 0 and s["mean_tokencut_s"] > 0
    # golden numbers of this setup (value facet, tau 0.2, short side 224)
    assert [r["methods"][m]["num_correct"] for m in ("low", "bilinear")] == GOLDEN_HITS
    assert "low" in out and "CorLoc" in out and f"{100 * r['methods']['low']['corloc']:.2f}" in out


GOLDEN_HITS = [2, 2]


def test_dense_and_sparse_give_the_same_box_on_real_features(shared_data, imgfocus):
    from liftkit.eval.tokencut import tokencut

    pil = Image.open(shared_data / VOC07 / "JPEGImages" / "000007.jpg").convert("RGB")
    x = imgfocus.preprocess(pil, size=imgfocus.target_size(pil.size, 224))
    feats = imgfocus.dense_features(x, "low")[0]  # key facet of the last layer, 16 x 23 grid
    a = tokencut(feats, (pil.size[1], pil.size[0]), tau=0.9, solver="dense")
    b = tokencut(feats, (pil.size[1], pil.size[0]), tau=0.9, solver="sparse")
    va, vb = a.eigenvector.ravel(), b.eigenvector.ravel()
    assert abs(va @ vb) / (np.linalg.norm(va) * np.linalg.norm(vb)) > 0.99
    assert a.box == b.box and np.array_equal(a.mask, b.mask)


def test_script_errors_are_one_line(shared_data, capsys, tmp_path):
    rc, _, err = _run(capsys, ["--dataset", "coco", "--dataroot", str(shared_data / "COCO/train2017"), "--offline"])
    assert rc == 2 and err.strip().splitlines()[-1] == \
        "error: --dataset coco needs --annotations (a COCO instances JSON)"
    rc, _, err = _run(capsys, ["--dataset", "voc07", "--dataroot", str(shared_data / VOC07), "--methods", "low,cubic"])
    assert rc == 2 and "error: unknown method 'cubic'" in err
    rc, _, err = _run(capsys, ["--dataset", "voc07", "--dataroot", str(tmp_path), "--offline"])
    assert rc == 2 and "has no Annotations/ folder" in err
    rc, _, err = _run(capsys, ["--dataset", "voc07", "--dataroot", str(shared_data / VOC07), "--offline",
                               "--lift_path", "none", "--methods", "low,lift"])
    assert rc == 2 and "error: --methods lift needs a LiFT but --lift_path is none" in err
    assert "Traceback" not in err


def test_folder_dataset_and_method_failure(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.open(ROOT / "assets" / "sample.jpg").save(folder / "cat.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    out_json = tmp_path / "f.json"
    # key facet at the paper's tau 0.2: every affinity is above tau on this backbone -> the method fails on the cat
    # image, the broken file fails to load; both are reported and the exit status is 1
    rc, out, err = _run(capsys, ["--dataset", "folder", "--dataroot", str(folder), "--offline", "--lift_path", "none",
                                 "--methods", "low", "--load_size", "112", "--output_json", str(out_json),
                                 "--tau", "0.2"])
    assert rc == 1
    assert "error: 2 failure(s)" in err and "broken.jpg" in err and "raise --tau" in err
    r = json.loads(out_json.read_text())
    assert r["methods"]["low"]["corloc"] is None and r["methods"]["low"]["num_errors"] == 1
    assert [im["name"] for im in r["images"]] == ["cat"]
    # with a usable facet the cat gets a box, no score, exit 0; --skip_bad counts the broken file instead
    rc, out, err = _run(capsys, ["--dataset", "folder", "--dataroot", str(folder), "--offline", "--lift_path", "none",
                                 "--methods", "low", "--load_size", "112", "--facet", "value", "--skip_bad",
                                 "--output_json", str(out_json)])
    assert rc == 0, err
    r = json.loads(out_json.read_text())
    assert r["dataset"]["num_skipped"] == 1 and r["dataset"]["skipped"][0]["item"] == "broken"
    res = r["images"][0]["results"]["low"]
    assert res["iou"] is None and res["correct"] is None and len(res["box"]) == 4
    assert r["images"][0]["width"] == 451 and r["images"][0]["height"] == 300


# ------------------------------------------------------------------------------------------------ --tau auto
def test_tau_auto_picks_the_tables_value(shared_data, tmp_path, capsys):
    from liftkit.eval.tokencut_tau import TAU_TABLE

    out_json = tmp_path / "auto.json"
    rc, _, err = _run(capsys, ["--dataset", "voc07", "--dataroot", str(shared_data / VOC07), "--offline",
                               "--lift_path", "none", "--methods", "low", "--load_size", "112", "--limit", "2",
                               "--output_json", str(out_json)])  # default --tau auto, key facet
    assert rc == 0, err  # the paper's 0.2 would fail every image (previous test); the table's value does not
    r = json.loads(out_json.read_text())
    entry = TAU_TABLE[("dinov2_vits14_imgfocus", "key")]
    assert r["tau"] == entry.voc and r["tau_source"] == entry.source and r["args"]["tau"] == entry.voc
    assert r["methods"]["low"]["num_errors"] == 0
    # an explicit --tau is used as given; a bad one is one line
    rc, _, err = _run(capsys, ["--dataset", "voc07", "--dataroot", str(shared_data / VOC07), "--offline",
                               "--lift_path", "none", "--methods", "low", "--tau", "high"])
    assert rc == 2 and err.strip().splitlines()[-1] == \
        "error: --tau 'high' is neither 'auto' nor a number; give e.g. --tau 0.2 or --tau auto"
