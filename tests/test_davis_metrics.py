"""DAVIS J&F: hand-made masks with known scores, the decay bins, the official OSVOS numbers, and the loader's errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from liftkit.data.davis import load_davis, load_sequence, read_label_png, read_set_file, write_label_png
from liftkit.errors import DatasetError
from liftkit.eval.davis_metrics import (
    boundary_tolerance,
    db_eval_boundary,
    db_eval_iou,
    db_statistics,
    decay_bins,
    evaluate_results_dir,
    f_measure,
    seg2bmap,
)
from tests.conftest import SHARED_DATA, require_shared_data

DATA = SHARED_DATA
DAVIS_ROOT = DATA / "DAVIS"
OSVOS = DATA / "DAVIS-2017-results" / "semi-supervised" / "osvos"
OSVOS_REF = DATA / "DAVIS-2017-results" / "reference_eval" / "osvos_semi-supervised_val.json"


def square(r0, c0, side=10, shape=(40, 40)):
    m = np.zeros(shape, bool)
    m[r0:r0 + side, c0:c0 + side] = True
    return m


# ----------------------------------------------------------------------------------------------------- J and F


def test_identical_masks_score_one():
    m = square(5, 5)
    assert db_eval_iou(m, m) == 1.0
    assert f_measure(m, m) == 1.0


def test_disjoint_masks_score_zero():
    a, b = square(2, 2, shape=(60, 60)), square(40, 40, shape=(60, 60))  # boundaries ~25 px apart, tolerance 1 px
    assert db_eval_iou(a, b) == 0.0
    assert f_measure(a, b) == 0.0


def test_empty_masks():
    empty, m = np.zeros((20, 20), bool), square(3, 3, shape=(20, 20))
    assert db_eval_iou(empty, empty) == 1.0 and f_measure(empty, empty) == 1.0
    assert db_eval_iou(m, empty) == 0.0 and f_measure(empty, m) == 0.0 and f_measure(m, empty) == 0.0
    # per-frame arrays: one empty/empty frame among others
    gt = np.stack([m, empty])
    np.testing.assert_array_equal(db_eval_iou(gt, gt), [1.0, 1.0])
    np.testing.assert_array_equal(db_eval_boundary(gt, np.stack([m, m])), [1.0, 0.0])


def test_seg2bmap_of_a_square():
    # boundary = inner right column + inner bottom row + outer left column + outer top row: 4 * side pixels
    b = seg2bmap(square(5, 5, side=10))
    assert b.sum() == 40
    assert b[5:15, 14].all() and b[14, 5:15].all() and b[4:15, 4].all() and b[4, 5:15].all()
    assert not b[5:14, 5:14].any()


def test_shifted_square_hand_computed():
    # B = A shifted 3 px right, tolerance disk(2). Of B's 40 boundary pixels, 24 lie within 2 px of A's boundary
    # (outer-left col: 6/11, top row: 9/10, right col: 0/10, bottom row: 9/9), and symmetrically 24 of A's
    # (left 0/11, top 10/10, right 5/10, bottom 9/9): P = R = F = 0.6. J = 70 / 130.
    a, b = square(10, 10, side=10), square(10, 13, side=10)
    assert f_measure(b, a, bound_th=2) == pytest.approx(0.6)
    assert db_eval_iou(a, b) == pytest.approx(7 / 13)
    # a 3-px tolerance reaches every shifted boundary pixel
    assert f_measure(b, a, bound_th=3) == pytest.approx(1.0)


def test_boundary_tolerance_davis_480p():
    assert boundary_tolerance((480, 854)) == 8  # ceil(0.008 * 979.6)
    assert boundary_tolerance((1080, 1920)) == 18
    assert boundary_tolerance((480, 854), bound_th=3) == 3


# ----------------------------------------------------------------------------------------------------- statistics


def test_decay_bins_overlap_like_official():
    assert decay_bins(9) == [(0, 3), (2, 5), (4, 7), (6, 9)]
    assert decay_bins(8) == [(0, 3), (2, 5), (4, 6), (5, 8)]  # 4.5 rounds up (the official +1e-10)
    assert decay_bins(1) == [(0, 1)] * 4


def test_db_statistics():
    v = np.arange(9) / 8.0
    mean, recall, decay = db_statistics(v)
    assert mean == pytest.approx(0.5)
    assert recall == pytest.approx(4 / 9)  # 5/8, 6/8, 7/8, 1 are > 0.5
    assert decay == pytest.approx(np.mean(v[0:3]) - np.mean(v[6:9]))  # = -0.75
    assert decay == pytest.approx(-0.75)
    # recall is strictly > 0.5
    assert db_statistics([0.5, 0.5, 0.5, 0.5])[1] == 0.0


# ----------------------------------------------------------------------------------------------------- official


@pytest.mark.real_data
def test_reproduces_official_osvos_evaluation():
    ref = json.loads(OSVOS_REF.read_text())
    res = evaluate_results_dir(DAVIS_ROOT, OSVOS, "val")
    assert res["failures"] == {} and res["n_sequences"] == 7 and res["n_objects"] == len(ref["per_object"]) == 7
    for key, value in ref["global"].items():
        assert res["global"][key] == pytest.approx(value, abs=1e-3), key
    assert res["global"]["J&F-Mean"] == pytest.approx(0.80221, abs=1e-5)
    assert set(res["per_object"]) == set(ref["per_object"])
    for obj, figures in ref["per_object"].items():
        for key, value in figures.items():
            assert res["per_object"][obj][key] == pytest.approx(value, abs=1e-3), (obj, key)


# ----------------------------------------------------------------------------------------------------- loader


def make_davis(root: Path, seqs=("a", "b"), n_frames=5, size=(24, 32)):
    """A tiny DAVIS-2017 tree: frames with a moving square, palette masks (object 1, and 2 in 'b')."""
    h, w = size
    for s in seqs:
        (root / "JPEGImages" / "480p" / s).mkdir(parents=True)
        (root / "Annotations" / "480p" / s).mkdir(parents=True)
        for t in range(n_frames):
            lab = np.zeros((h, w), np.uint8)
            lab[4:12, 2 + 2 * t: 10 + 2 * t] = 1
            if s == "b":
                lab[14:20, 20:28] = 2
            img = np.full((h, w, 3), 40, np.uint8)
            img[lab == 1] = (220, 30, 30)
            img[lab == 2] = (30, 220, 30)
            Image.fromarray(img).save(root / "JPEGImages" / "480p" / s / f"{t:05d}.jpg")
            write_label_png(root / "Annotations" / "480p" / s / f"{t:05d}.png", lab)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(seqs) + "\n")
    return root


def test_loader_reads_tiny_davis(tmp_path):
    root = make_davis(tmp_path)
    seqs = load_davis(root, "val")
    assert [s.name for s in seqs] == ["a", "b"]
    assert seqs[1].n_frames == 5 and seqs[1].size_hw == (24, 32) and seqs[1].num_objects() == 2
    names, gt = seqs[1].load_annotations()
    assert names[0] == "00000" and gt.shape == (5, 24, 32) and set(np.unique(gt)) == {0, 1, 2}
    assert Image.open(seqs[0].annotation_paths[0]).mode == "P"
    assert [s.name for s in load_davis(root, "val", sequences=["b"])] == ["b"]


def test_loader_error_missing_first_mask(tmp_path):
    root = make_davis(tmp_path)
    (root / "Annotations" / "480p" / "a" / "00000.png").unlink()
    with pytest.raises(DatasetError, match=r"sequence 'a' frame 00000: the mask for frame 0"):
        load_sequence(root, "a")


def test_loader_error_size_mismatch(tmp_path):
    root = make_davis(tmp_path)
    Image.new("RGB", (40, 24)).save(root / "JPEGImages" / "480p" / "a" / "00003.jpg")
    with pytest.raises(DatasetError, match=r"sequence 'a' frame 00003: .* is 40x24 px but frame 00000 is 32x24"):
        load_sequence(root, "a")
    root2 = make_davis(tmp_path / "m")
    write_label_png(root2 / "Annotations" / "480p" / "b" / "00002.png", np.zeros((12, 16), np.uint8))
    with pytest.raises(DatasetError, match=r"sequence 'b' frame 00002: mask .* is 16x12 px"):
        load_sequence(root2, "b")


def test_loader_error_empty_set_file(tmp_path):
    root = make_davis(tmp_path)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n  \n")
    with pytest.raises(DatasetError, match=r"val.txt' lists no sequence"):
        read_set_file(root, "val")
    with pytest.raises(DatasetError, match=r"set file .*train.txt' is missing; choose --set from: val"):
        read_set_file(root, "train")


def test_loader_error_unknown_label(tmp_path):
    root = make_davis(tmp_path)
    lab = read_label_png(root / "Annotations" / "480p" / "a" / "00004.png")
    lab[0, 0] = 3
    write_label_png(root / "Annotations" / "480p" / "a" / "00004.png", lab)
    seq = load_sequence(root, "a")
    msg = r"sequence 'a' frame 00004: .* label\(s\) \[3\] that do not occur in frame 0"
    with pytest.raises(DatasetError, match=msg):
        seq.load_annotations()


def test_loader_error_missing_folders_and_rgb_masks(tmp_path):
    with pytest.raises(DatasetError, match="DAVIS root .* is missing"):
        load_davis(tmp_path / "nowhere")
    root = make_davis(tmp_path)
    shutil.rmtree(root / "Annotations" / "480p" / "b")
    with pytest.raises(DatasetError, match=r"sequence 'b': annotation folder .* is missing"):
        load_davis(root)
    with pytest.raises(DatasetError, match=r"sequence\(s\) zzz not listed in DAVIS set 'val'"):
        load_davis(root, sequences=["zzz"])
    Image.new("RGB", (32, 24)).save(root / "Annotations" / "480p" / "a" / "00001.png")
    with pytest.raises(DatasetError, match=r"sequence 'a' frame 00001 mask .* is a RGB image, not a palette"):
        load_sequence(root, "a").load_annotations()


# ----------------------------------------------------------------------------------------------------- results dir


def test_evaluate_results_dir_perfect_and_errors(tmp_path):
    root = make_davis(tmp_path / "davis")
    res = tmp_path / "res"
    shutil.copytree(root / "Annotations" / "480p", res)
    out = evaluate_results_dir(root, res)
    assert out["n_objects"] == 3 and set(out["per_object"]) == {"a_1", "b_1", "b_2"}
    assert out["global"]["J&F-Mean"] == 1.0 and out["global"]["J-Decay"] == 0.0

    # object 2 missing from the prediction of 'b' -> J = F = 0 for b_2, global = mean over 3 objects
    for t in range(1, 4):
        p = res / "b" / f"{t:05d}.png"
        lab = read_label_png(p)
        lab[lab == 2] = 0
        write_label_png(p, lab)
    out = evaluate_results_dir(root, res)
    assert out["per_object"]["b_2"]["J-Mean"] == 0.0 and out["per_object"]["b_2"]["F-Mean"] == 0.0
    assert out["global"]["J-Mean"] == pytest.approx(2 / 3)

    # an id above the sequence's object count, and a missing file
    write_label_png(res / "a" / "00002.png", np.full((24, 32), 2, np.uint8))
    (res / "b" / "00003.png").unlink()
    with pytest.raises(DatasetError, match=r"sequence 'a' frame 00002: result has object id 2 but .* only 1"):
        evaluate_results_dir(root, res)
    out = evaluate_results_dir(root, res, skip_failed=True)
    assert set(out["failures"]) == {"a", "b"} and "00003.png' is missing" in out["failures"]["b"]
    assert out["n_objects"] == 0
