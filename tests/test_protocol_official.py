"""Issue #13: ``--protocol official`` in the evaluation scripts sets the official settings where our defaults differ;
a flag given explicitly (under any alias) keeps its value, with a warning when it differs from the official one."""

from __future__ import annotations

import importlib
import logging

import pytest
import torch

from liftkit.cli import options
from liftkit.eval.label_propagation import soft_to_labels

CASES = {  # command -> settings under --protocol official (besides --lift_path / --methods)
    "eval_spair": {"pairs_per_category": 100, "sample_with_replacement": True, "alphas": (0.1, 0.05, 0.01), "resize_mode": "pad",
                   "load_size": 224},
    "eval_davis": {"load_size": 224, "resize_mode": "square", "label_upsample": "patch",
                   "neighborhood_scaling": "cells"},
    "visualize": {"load_size": 224, "resize_mode": "square", "lift_iter": 4, "limit": 20, "no_cka": True},
    "eval_tokencut": {"load_size": 224, "resize_mode": "square", "resize_filter": "bilinear", "box_frame": "input",
                      "tau": "0.2", "solver": "dense", "set": "train"},
}
DATA = {"eval_spair": ["--dataroot", "/data/SPair-71k"], "eval_davis": ["--dataroot", "/data/DAVIS"],
        "eval_tokencut": ["--dataroot", "/data", "--dataset", "VOC07"], "visualize": ["--dataroot", "/data/val"]}
LIFT_METHODS = ("eval_spair", "eval_davis", "eval_tokencut")  # visualize shows every method and needs LiFT


def _parse(command: str, argv, caplog=None):
    mod = importlib.import_module(f"liftkit.cli.{command}")
    parser = mod.build_parser()
    argv = DATA[command] + list(argv)
    args = parser.parse_args(argv)
    args._given = options.given_dests(parser, argv)
    options.apply_protocol(args, mod.official_settings(args), logging.getLogger("test_protocol"))
    return args


@pytest.mark.parametrize("command", sorted(CASES))
def test_official_settings_without_lift(command):
    ours = _parse(command, [])
    args = _parse(command, ["--protocol", "official"])
    for dest, value in CASES[command].items():
        assert getattr(args, dest) == value, (command, dest)
    assert any(getattr(ours, d) != v for d, v in CASES[command].items())  # the protocol changes something
    if command in LIFT_METHODS:  # the official script runs without LiFT unless --lift_path is given
        assert (args.lift_path, args.methods) == ("none", "low")
        assert ours.lift_path == "auto" and ours.methods != "low"


@pytest.mark.parametrize("command", LIFT_METHODS)
def test_official_lift_path_evaluates_lift_only(command):
    args = _parse(command, ["--protocol", "official", "--lift_path", "pretrained/lift_dino_vits16.pth"])
    assert (args.lift_path, args.methods) == ("pretrained/lift_dino_vits16.pth", "lift")


def test_explicit_flags_win_and_are_warned(caplog):
    with caplog.at_level(logging.WARNING, logger="test_protocol"):
        args = _parse("eval_davis", ["--protocol", "official", "--short_side", "480", "--methods", "low,lift"])
    assert (args.load_size, args.resize_mode, args.methods) == (480, "short", "low,lift")
    assert args.label_upsample == "patch" and args.lift_path == "none"  # only what was left alone changes
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "keeping the explicit load_size=480 (official: 224)" in warned and "resize_mode='short'" in warned
    # an explicit value equal to the default still counts as explicit
    args = _parse("eval_spair", ["--protocol", "official", "--alphas", "0.05,0.1,0.15"])
    assert args.alphas == (0.05, 0.1, 0.15) and args.sample_with_replacement is True


def test_ours_is_untouched_by_the_official_settings():
    for command in CASES:
        mod = importlib.import_module(f"liftkit.cli.{command}")
        parser = mod.build_parser()
        args = parser.parse_args(DATA[command])
        before = dict(vars(args))
        args._given = options.given_dests(parser, DATA[command])
        assert options.apply_protocol(args, mod.official_settings(args)) == {}
        assert {k: v for k, v in vars(args).items() if k != "_given"} == before


def test_given_dests_sees_aliases():
    from liftkit.cli import eval_davis

    parser = eval_davis.build_parser()
    assert options.given_dests(parser, ["--dataroot", "x", "--imsize", "224"]) >= {"data_root", "load_size",
                                                                                    "resize_mode"}
    assert "resize_mode" not in options.given_dests(parser, ["--dataroot", "x", "--load_size", "224"])


def test_label_upsample_by_the_patch_size_as_official():
    """The official DAVIS code upsamples the soft labels by the patch size whatever the grid: on a LiFT 28 x 28 grid
    of a 224 frame the argmax is taken at 448 x 448, not 224 x 224, then resized (nearest) to the frame."""
    torch.manual_seed(0)
    soft = torch.rand(2, 28, 28)
    up = torch.nn.functional.interpolate(soft[None], scale_factor=16, mode="bilinear", align_corners=False,
                                         recompute_scale_factor=False)[0]
    from liftkit.eval.label_propagation import norm_mask

    want = norm_mask(up.clone()).argmax(0).to(torch.uint8).numpy()
    got = soft_to_labels(soft, (224, 224), None, scale_factor=16)
    assert got.shape == (448, 448) and (got == want).all()
    ours = soft_to_labels(soft, (224, 224), (448, 448))  # to the frame, then nearest to 448: not the same
    assert ours.shape == (448, 448) and (ours != got).any()


def test_official_ground_truth_in_the_input_frame():
    """LOST / TokenCut with a fixed input size: boxes scaled to the input, then truncated (not rounded)."""
    import numpy as np

    from liftkit.eval.boxes import boxes_to_input_frame

    gt = np.array([[47.0, 239.0, 195.0, 371.0], [7.0, 10.0, 352.0, 499.0]])  # VOC 000001 (x1 - 1, y1 - 1, x2, y2)
    got = boxes_to_input_frame(gt, (500, 353), (224, 224))
    want = [[int(47 * 224 / 353), int(239 * 224 / 500), int(195 * 224 / 353), int(371 * 224 / 500)],
            [int(7 * 224 / 353), int(10 * 224 / 500), int(352 * 224 / 353), int(499 * 224 / 500)]]
    assert got.tolist() == want and got[1, 2] == 223.0  # 223.37 truncated
