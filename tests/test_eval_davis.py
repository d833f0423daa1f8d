"""eval_davis.main end to end on one real DAVIS sequence with the real offline backbone, and its refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import eval_davis
from liftkit.data.davis import read_label_png
from liftkit.eval.davis_metrics import evaluate_results_dir
from tests.conftest import SHARED_DATA, require_shared_data

DAVIS = SHARED_DATA / "DAVIS"
STATS = {"J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One real run: blackswan, 4 frames at short side 224 (16 x 28 grid), backbone grid ('low')."""
    require_shared_data()
    out = tmp_path_factory.mktemp("davis_run")
    argv = ["--data_path", str(DAVIS), "--sequences", "blackswan", "--methods", "low", "--max_frames", "4",
            "--short_side", "224", "--offline", "--lift_path", "none", "--device", "cpu",
            "--output_dir", str(out / "masks"), "--output_json", str(out / "res.json"), "--quiet"]
    return out, argv, eval_davis.main(argv)


def test_end_to_end_outputs(run, capsys):
    out, _, rc = run
    assert rc == 0
    report = json.loads((out / "res.json").read_text())
    assert report["failures"] == {} and list(report["methods"]) == ["low"]
    assert report["extractor"]["backbone"] == "dinov2_vits14_imgfocus" and report["extractor"]["lift_path"] == ""
    low = report["methods"]["low"]
    assert set(low["global"]) == STATS and set(low["per_object"]) == {"blackswan_1"}
    assert set(low["per_object"]["blackswan_1"]) == STATS
    seq = low["per_sequence"]["blackswan"]
    assert seq["n_frames"] == 4 and seq["input_size"] == [224, 392] and seq["grid"] == [16, 28]
    assert seq["time_per_frame_s"] > 0 and low["time_per_frame_s"] == pytest.approx(seq["time_per_frame_s"])
    assert low["n_objects"] == 1 and low["window_radius_cells"] == 12
    # real features follow the swan over 3 frames (an all-background or frozen answer would score ~0 / lower)
    assert low["global"]["J-Mean"] > 0.5 and low["global"]["J&F-Mean"] > 0.5

    # the masks: palette PNGs at the frames' size, frame 0 is the given annotation
    masks = sorted((out / "masks" / "low" / "blackswan").glob("*.png"))
    assert [m.name for m in masks] == [f"{t:05d}.png" for t in range(4)]
    assert Image.open(masks[2]).mode == "P" and Image.open(masks[2]).size == (854, 480)
    gt0 = read_label_png(DAVIS / "Annotations" / "480p" / "blackswan" / "00000.png")
    np.testing.assert_array_equal(read_label_png(masks[0]), gt0)
    assert set(np.unique(read_label_png(masks[3]))) == {0, 1}

    # the reported figures are those of the written masks
    again = evaluate_results_dir(DAVIS, out / "masks" / "low", sequences=["blackswan"], max_frames=4)
    assert again["global"] == pytest.approx(low["global"])


def test_evaluate_only_scores_existing_masks(run, capsys):
    out, _, _ = run
    capsys.readouterr()
    rc = eval_davis.main(["--data_path", str(DAVIS), "--sequences", "blackswan", "--max_frames", "4", "--quiet",
                          "--evaluate_only", str(out / "masks" / "low"), "--output_json", str(out / "eval.json")])
    assert rc == 0
    table = capsys.readouterr().out
    assert "J&F-Mean" in table and "blackswan" in table
    first = json.loads((out / "res.json").read_text())["methods"]["low"]["global"]
    assert json.loads((out / "eval.json").read_text())["methods"]["low"]["global"] == pytest.approx(first)
    # scoring all frames of the truncated run: the missing masks are reported, exit code 1
    rc = eval_davis.main(["--data_path", str(DAVIS), "--sequences", "blackswan", "--quiet",
                          "--evaluate_only", str(out / "masks" / "low")])
    assert rc == 1
    assert "blackswan' frame 00004 result" in capsys.readouterr().err


def test_refuses_stale_results(run, capsys):
    out, argv, _ = run
    capsys.readouterr()
    assert eval_davis.main(argv) == 2
    err = capsys.readouterr().err
    assert "already holds results; pass --overwrite" in err and "Traceback" not in err
    foreign = out / "foreign" / "low"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    assert eval_davis.main(["--data_path", str(DAVIS), "--output_dir", str(out / "foreign"), "--methods", "low",
                            "--overwrite", "--quiet"]) == 2
    assert "was not written by eval_davis.py" in capsys.readouterr().err
    assert (foreign / "notes.txt").is_file()


@pytest.mark.real_data
@pytest.mark.parametrize("flags,message", [
    (["--methods", "low,bogus"], "unknown method 'bogus'"),
    (["--methods", "low", "--max_frames", "2"], "--max_frames 2: at least 3"),
    (["--methods", "low", "--sequences", "nope"], "sequence(s) nope not listed in DAVIS set 'val'"),
    (["--methods", "low", "--set", "test-dev"], "set file"),
    (["--methods", "low,lift", "--lift_path", "none", "--offline"], "--methods lift needs a LiFT but --lift_path is none"),
])
def test_bad_flags(tmp_path, capsys, flags, message):
    rc = eval_davis.main(["--data_path", str(DAVIS), "--output_dir", str(tmp_path), "--quiet"] + flags)
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1


def test_methods_side_by_side_write_the_masks_each_writes_alone(run, tmp_path):
    """All methods share each frame's backbone pass; the masks of 'low' are those of the run with 'low' alone."""
    out, argv, _ = run
    both = tmp_path / "both"
    rc = eval_davis.main(["--data_root", str(DAVIS), "--sequences", "blackswan", "--methods", "bilinear,low",
                          "--max_frames", "4", "--short_side", "224", "--offline", "--lift_path", "none",
                          "--device", "cpu", "--output_dir", str(both), "--quiet"])
    assert rc == 0
    for t in range(4):
        alone = read_label_png(out / "masks" / "low" / "blackswan" / f"{t:05d}.png")
        np.testing.assert_array_equal(read_label_png(both / "low" / "blackswan" / f"{t:05d}.png"), alone)
    assert (both / "bilinear" / "blackswan" / "00003.png").is_file()
