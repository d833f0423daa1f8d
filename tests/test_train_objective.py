"""liftkit.train.objective: the losses, the two pairs, the validation metric on hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from liftkit.errors import ConfigError
from liftkit.lift.model import LiFT
from liftkit.train.data import make_pyramid
from liftkit.train.objective import (
    LiftPairs,
    PairMetrics,
    cosine_map,
    make_targets,
    pair_losses,
    reconstruction_loss,
    upsample_baseline,
    validate_batch,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _const(vec, b=1, h=2, w=2):
    return torch.tensor(vec, dtype=torch.float32).view(1, -1, 1, 1).expand(b, -1, h, w).clone()


def test_cosine_loss_known_values():
    t = torch.randn(2, 5, 3, 3)
    assert reconstruction_loss(t, t, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert reconstruction_loss(-t, t, "cosine").item() == pytest.approx(2.0, abs=1e-6)
    assert reconstruction_loss(3 * t, t, "cosine").item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    # two locations: one aligned (cos 1), one orthogonal (cos 0) -> mean(1 - cos) = 0.5
    pred = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).T.reshape(1, 2, 1, 2)
    assert reconstruction_loss(pred, target, "cosine").item() == pytest.approx(0.5, abs=1e-6)


def test_l1_l2_known_values_and_unknown_loss():
    t = torch.randn(2, 4, 3, 3)
    assert reconstruction_loss(t + 0.5, t, "l1").item() == pytest.approx(0.5, abs=1e-6)
    assert reconstruction_loss(t + 0.5, t, "l2").item() == pytest.approx(0.25, abs=1e-6)
    with pytest.raises(ConfigError, match="--loss"):
        reconstruction_loss(t, t, "huber")


def test_baselines_and_metric_on_hand_made_maps():
    a, b = [1.0, 0.0], [0.0, 1.0]
    low = torch.tensor([a, b]).T.reshape(1, 2, 1, 2)  # a 1x2 map: [a | b]
    target = _const(a, h=2, w=4)  # the "high-resolution truth" is a everywhere
    near = upsample_baseline(low, (2, 4), "nearest")  # a a b b
    bil = upsample_baseline(low, (2, 4), "bilinear")  # a, .75a+.25b, .25a+.75b, b  (align_corners=False)
    assert torch.allclose(cosine_map(near, target)[0, 0], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    c1, c2 = 0.75 / math.sqrt(0.625), 0.25 / math.sqrt(0.625)
    assert torch.allclose(cosine_map(bil, target)[0, 0], torch.tensor([1.0, c1, c2, 0.0]), atol=1e-6)

    lifted = target.clone()
    lifted[..., :, 2:] *= -1  # LiFT right on half the locations, opposite on the other half -> mean cos 0
    m = PairMetrics()
    m.update("half", target, low, lifted)
    r = m.result()
    assert r["half/lift"] == pytest.approx(0.0, abs=1e-7)
    assert r["half/nearest"] == pytest.approx(0.5, abs=1e-7)
    assert r["half/bilinear"] == pytest.approx((1 + c1 + c2) / 4, abs=1e-6)
    assert math.isnan(r["quarter/lift"])  # no data for that pair yet

    # a second batch of two images where LiFT is exact: the mean is over all 8 + 16 locations
    m.update("half", target.expand(2, -1, -1, -1), low.expand(2, -1, -1, -1), target.expand(2, -1, -1, -1))
    assert m.result()["half/lift"] == pytest.approx(16 / 24, abs=1e-7)


def _avgpool_backbone(p):
    """A fake frozen backbone of patch p: (B, 3, H, W) -> (B, 3, H/p, W/p) patch means, doubled."""
    return lambda x: 2 * F.avg_pool2d(x, p)


def test_make_targets_three_scales_from_one_image():
    x = torch.randn(2, 3, 64, 64)
    t = make_targets(_avgpool_backbone(8), x, "antialias")
    half, quarter = make_pyramid(x, "antialias")
    assert torch.equal(t["img_half"], half) and torch.equal(t["img_quarter"], quarter)
    assert torch.allclose(t["feat_full"], 2 * F.avg_pool2d(x, 8))
    assert torch.allclose(t["feat_half"], 2 * F.avg_pool2d(half, 8))
    assert t["feat_half"].shape == (2, 3, 4, 4) and t["feat_quarter"].shape == (2, 3, 2, 2)
    ts = make_targets(_avgpool_backbone(8), x, "strided")
    assert torch.equal(ts["img_half"], x[..., ::2, ::2])


def test_pair_losses_sum_both_pairs_and_train_lift():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 64, 64)
    # a 16-channel "backbone" with patch 8
    proj = torch.randn(16, 3)
    extract = lambda im: torch.einsum("oc,bchw->bohw", proj, F.avg_pool2d(im, 8))  # noqa: E731
    targets = make_targets(extract, x)
    model = LiftPairs(LiFT(16, 8))
    loss, parts = pair_losses(model, targets, "cosine")
    assert loss.item() == pytest.approx(parts["half"].item() + parts["quarter"].item(), rel=1e-6)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    first = loss.item()
    for _ in range(15):
        loss, _ = pair_losses(model, targets, "cosine")
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


class _Nearest(nn.Module):
    def forward(self, feats, images):
        return F.interpolate(feats, scale_factor=2, mode="nearest")


def test_validate_batch_scores_lift_like_its_output():
    torch.manual_seed(0)
    t = make_targets(_avgpool_backbone(8), torch.randn(2, 3, 64, 64))
    m = PairMetrics()
    validate_batch(_Nearest(), t, m)  # a "LiFT" that is nearest upsampling scores exactly like nearest
    r = m.result()
    for pair in ("half", "quarter"):
        assert r[f"{pair}/lift"] == pytest.approx(r[f"{pair}/nearest"], abs=1e-12)
        assert -1 <= r[f"{pair}/bilinear"] <= 1


def test_centered_cosine_loss_ignores_the_shared_component():
    from liftkit.train.objective import reconstruction_loss

    c = torch.full((1, 3, 1, 1), 10.0)
    a = torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    # raw cosine barely sees the sign of a: both are dominated by c
    assert reconstruction_loss(c + a, c - a, "cosine").item() < 0.1
    assert reconstruction_loss(c + a, c + a, "cosine_centered", c).item() == pytest.approx(0.0, abs=1e-6)
    assert reconstruction_loss(c + a, c - a, "cosine_centered", c).item() == pytest.approx(2.0, abs=1e-6)
    with pytest.raises(ConfigError):
        reconstruction_loss(c + a, c - a, "cosine_centered")


def test_target_means_and_centered_metric_on_hand_made_maps():
    from liftkit.train.objective import PairMetrics, TargetMeans

    full = torch.zeros(2, 2, 2, 2)
    full[:, 0] = 3.0
    full[1, 1] = 2.0  # channel means: [3, 1]
    half = torch.ones(2, 2, 1, 1)
    means = TargetMeans(2)
    means.update({"feat_full": full[:1], "feat_half": half[:1]})
    means.update({"feat_full": full[1:], "feat_half": half[1:]})
    centers = means.result()
    assert torch.equal(centers["full"].flatten(), torch.tensor([3.0, 1.0]))
    assert torch.equal(centers["half"].flatten(), torch.tensor([1.0, 1.0]))
    # the target minus its centre is (0, -1) for image 0 and (0, +1) for image 1; a LiFT output equal to the
    # target scores 1, one with the detail flipped scores -1, although both have raw cosines near 0.9
    metrics = PairMetrics(centers)
    low = torch.zeros(2, 2, 1, 1)
    low[:, 0] = 3.0
    low[:, 1] = 1.0  # bilinear/nearest of this = exactly the centre: centred cosine 0 (eps-guarded)
    metrics.update("half", full, low, full.clone())
    res = metrics.result()
    assert res["half/lift_centered"] == pytest.approx(1.0)
    assert res["half/bilinear_centered"] == pytest.approx(0.0, abs=1e-6)
    assert res["half/lift"] == pytest.approx(1.0)
    flipped = full.clone()
    flipped[:, 1] = 2.0 - full[:, 1]  # (3, 2) <-> (3, 0): detail flipped around the centre
    m2 = PairMetrics(centers)
    m2.update("half", full, low, flipped)
    assert m2.result()["half/lift_centered"] == pytest.approx(-1.0)
    assert m2.result()["half/lift"] > 0.8


def test_raw_plus_centered_loss_is_the_sum():
    from liftkit.train.objective import reconstruction_loss

    torch.manual_seed(0)
    c = torch.randn(1, 4, 1, 1) * 5
    p, t = torch.randn(2, 4, 3, 3) + c, torch.randn(2, 4, 3, 3) + c
    both = reconstruction_loss(p, t, "cosine_raw_centered", c)
    assert both.item() == pytest.approx(
        reconstruction_loss(p, t, "cosine").item() + reconstruction_loss(p, t, "cosine_centered", c).item(), abs=1e-6)
