"""The correspondence term (liftkit.train.matching, --match_weight): exact warp geometry, the loss on hand-made
feature maps with a known answer, and train_lift end to end with it (tiny random ViT)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from liftkit.train import matching
from tests.test_train_run import TINY, _events, _last_err, flat_run  # noqa: F401 (fixture)
from train_lift import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _ramp(h: int, w: int) -> torch.Tensor:
    """(1, 2, h, w): channel 0 = the x, channel 1 = the y normalised coordinate of each pixel centre."""
    xs = (2 * torch.arange(w, dtype=torch.float64) + 1) / w - 1
    ys = (2 * torch.arange(h, dtype=torch.float64) + 1) / h - 1
    return torch.stack([xs.expand(h, w), ys[:, None].expand(h, w)])[None].float()


def test_warps_are_sub_boxes_mirrored_half_the_time():
    theta = matching.random_warps(4000, torch.Generator().manual_seed(0), min_scale=0.5)
    sx, sy, tx, ty = theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2]
    assert ((sx.abs() >= 0.5 * math.sqrt(3 / 4) - 1e-6) & (sx.abs() <= 1)).all() and (sy > 0).all()
    assert ((tx.abs() + sx.abs() <= 1 + 1e-6) & (ty.abs() + sy <= 1 + 1e-6)).all()  # the box stays inside
    assert abs(float((sx < 0).float().mean()) - 0.5) < 0.03
    again = matching.random_warps(4000, torch.Generator().manual_seed(0), min_scale=0.5)
    assert torch.equal(theta, again)


def test_rendered_view_and_point_map_agree_exactly():
    """A view of a coordinate ramp holds, at every target point, the source coordinates the point map gives."""
    gen = torch.Generator().manual_seed(3)
    img = _ramp(32, 32).repeat(5, 1, 1, 1)
    img = torch.cat([img, img[:, :1]], dim=1)  # 3 channels
    theta = matching.random_warps(5, gen)
    view = matching.render_warps(img, theta, torch.zeros(3), torch.ones(3), gen, jitter=0)
    trg, src = matching.query_points(theta, 6, gen)
    read = F.grid_sample(view, trg.unsqueeze(1), mode="bilinear", align_corners=False)[:, :2, 0].transpose(1, 2)
    inside = (trg.abs() < 1 - 1 / 32).all(dim=2)  # a view is read by clamping within half a pixel of its edge
    assert inside.float().mean() > 0.85
    assert torch.allclose(read[inside], src[inside], atol=1e-5)
    assert ((trg > -1) & (trg < 1)).all() and trg.shape == (5, 36, 2)


def test_loss_is_low_for_features_that_follow_the_warp_and_log_n_for_noise():
    gen = torch.Generator().manual_seed(1)
    src = torch.randn(3, 16, 32, 32, generator=gen)
    src = F.avg_pool2d(F.pad(src, (1, 1, 1, 1), mode="replicate"), 3, stride=1)  # smooth: readable between cells
    theta = matching.random_warps(3, gen, min_scale=0.9)
    grid = F.affine_grid(theta, [3, 16, 32, 32], align_corners=False)
    trg = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    good = matching.matching_loss(src, trg, theta, 8, 0.02, torch.Generator().manual_seed(2))
    noise = torch.randn(3, 16, 32, 32, generator=gen)
    bad = matching.matching_loss(src, noise, theta, 8, 1.0, torch.Generator().manual_seed(2))
    assert float(good) < 1.0
    assert abs(float(bad) - math.log(32 * 32)) < 0.2  # a temperature-1 softmax over noise is near uniform


def test_train_lift_with_the_matching_term(tmp_path, flat_run, capsys):  # noqa: F811
    _, data, base = flat_run
    out = tmp_path / "match"
    args = ["--data_root", str(data), "--output_dir", str(out), "--epochs", "1", "--batch_size", "4", "--head",
            "residual", "--match_weight", "0.5", "--match_grid", "4"] + TINY
    assert main(args) == 0
    steps = _events(out, "step")
    assert steps and all(s["loss_match"] > 0 for s in steps)
    assert all(abs(s["loss"] - s["loss_half"] - s["loss_quarter"] - 0.5 * s["loss_match"]) < 1e-4 for s in steps)
    cfg = json.loads((out / "log.jsonl").read_text().splitlines()[0])["args"]
    assert cfg["match_weight"] == 0.5
    # fine-tuning from it: same head accepted, another head refused before training
    out2 = tmp_path / "ft"
    assert main(["--data_root", str(data), "--output_dir", str(out2), "--epochs", "1", "--batch_size", "4",
                 "--head", "residual", "--init_lift", str(out / "lift_dino_vits16.safetensors")] + TINY) == 0
    assert main(["--data_root", str(data), "--output_dir", str(tmp_path / "x"), "--epochs", "1", "--batch_size",
                 "4", "--init_lift", str(out / "lift_dino_vits16.safetensors")] + TINY) == 2
    last = _last_err(capsys)
    assert last.startswith("error: --init_lift") and "('lift', 'residual', None)" in last, last


@pytest.mark.parametrize("flag,value", [("--match_weight", "-1"), ("--match_temp", "0"), ("--match_grid", "1"),
                                        ("--match_scale_min", "0.1"), ("--init_lift", "nowhere.safetensors")])
def test_bad_matching_flags_are_refused_in_one_line(tmp_path, flat_run, capsys, flag, value):  # noqa: F811
    _, data, _ = flat_run
    rc = main(["--data_root", str(data), "--output_dir", str(tmp_path / "o"), flag, value] + TINY)
    last = _last_err(capsys)
    assert rc == 2 and last.startswith("error: ") and flag in last, last
    assert not (tmp_path / "o").exists()
