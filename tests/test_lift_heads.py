"""LiFT output heads: the attend head (convex combination of the k x k low-resolution neighbours), its priors, its
files and their refusal; the residual head's legacy spelling."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from liftkit.errors import CheckpointError
from liftkit.lift.checkpoint import LiftMeta, load_lift, save_lift
from liftkit.lift.model import LiFT, attend_combine, attend_log_prior


def _meta(**kw) -> LiftMeta:
    base = dict(backbone="dinov2_vits14_imgfocus", backbone_weights_sha256="ab" * 32, layer=11, facet="key",
                channel_order="dim_major", patch_size=14, channels=32, mean=(0.485, 0.456, 0.406),
                std=(0.229, 0.224, 0.225))
    base.update(kw)
    return LiftMeta(**base)


def _header(path) -> dict:
    """The safetensors metadata of a LiFT file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata())


def _rewrite(path, out, **changes):
    """A copy of the LiFT file ``path`` at ``out`` with ``changes`` to its header (same weights)."""
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(path)), str(out), metadata={**_header(path), **changes})
    return out


def _box_then_repeat(f: torch.Tensor, k: int) -> torch.Tensor:
    r = k // 2
    box = F.avg_pool2d(F.pad(f, (r, r, r, r), mode="replicate"), k, stride=1)
    return box.repeat_interleave(2, -2).repeat_interleave(2, -1)


def test_attend_output_is_a_convex_combination_of_the_parent_neighbourhood():
    torch.manual_seed(0)
    f = torch.randn(1, 4, 3, 4)
    logits = torch.randn(1, 9, 6, 8) * 3
    out = attend_combine(f, logits, 3)
    w = torch.softmax(logits, dim=1)
    assert torch.allclose(w.sum(1), torch.ones(1, 6, 8))
    # output cell (3, 5): parent (1, 2); neighbour j = (oy, ox) reads f[1 + oy - 1, 2 + ox - 1] (clamped at borders)
    expect = sum(w[0, j, 3, 5] * f[0, :, min(max(1 + j // 3 - 1, 0), 2), min(max(2 + j % 3 - 1, 0), 3)]
                 for j in range(9))
    assert torch.allclose(out[0, :, 3, 5], expect, atol=1e-6)
    # a one-hot weight on the centre neighbour gives nearest upsampling exactly
    onehot = torch.full((1, 9, 6, 8), -1e4)
    onehot[:, 4] = 0
    assert torch.allclose(attend_combine(f, onehot, 3), F.interpolate(f, scale_factor=2, mode="nearest"))
    # every output channel lies within the range of the 3x3 neighbourhood (never outside the convex hull)
    lo = -F.max_pool2d(F.pad(-f, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    hi = F.max_pool2d(F.pad(f, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    up = lambda t: t.repeat_interleave(2, -2).repeat_interleave(2, -1)  # noqa: E731
    assert bool((out >= up(lo) - 1e-6).all()) and bool((out <= up(hi) + 1e-6).all())


@pytest.mark.parametrize("k", [3, 5])
def test_untrained_attend_with_uniform_prior_is_a_box_filter(k):
    torch.manual_seed(1)
    lift = LiFT(16, 14, head="attend", kernel=k, prior="uniform").eval()
    f, img = torch.randn(2, 16, 4, 5), torch.randn(2, 3, 56, 70)
    with torch.no_grad():
        assert torch.allclose(lift(f, img), _box_then_repeat(f, k), atol=1e-6)


def test_untrained_attend_with_bilinear_prior_is_bilinear_upsampling():
    torch.manual_seed(2)
    lift = LiFT(16, 14, head="attend").eval()
    f, img = torch.randn(1, 16, 5, 6), torch.randn(1, 3, 70, 84)
    with torch.no_grad():
        out = lift(f, img)
    bil = F.interpolate(f, scale_factor=2, mode="bilinear", align_corners=False)
    assert (out - bil).abs().max() < 5e-5  # the prior floors unused neighbours at 1e-6, so not exactly 0
    p = attend_log_prior(3, "bilinear").exp()
    assert torch.allclose(p.sum(1), torch.ones(4), atol=1e-5)
    assert p[0].view(3, 3)[0, 0] == pytest.approx(0.0625, abs=1e-5)  # sub-position (0, 0): up-left diagonal
    assert p[3].view(3, 3)[1, 1] == pytest.approx(0.5625, abs=1e-5)


def test_attend_head_has_fewer_output_channels_and_trains():
    torch.manual_seed(3)
    lift = LiFT(32, 14, head="attend")
    assert lift.outc.weight.shape == (9, 16, 1, 1)
    f, img, target = torch.randn(2, 32, 4, 4), torch.randn(2, 3, 56, 56), torch.randn(2, 32, 8, 8)
    opt = torch.optim.Adam(lift.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = (1 - F.cosine_similarity(lift(f, img), target, dim=1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_attend_file_round_trips_and_unknown_head_is_refused(tmp_path):
    torch.manual_seed(4)
    lift = LiFT(32, 14, head="attend", kernel=5, prior="uniform")
    with torch.no_grad():
        lift.outc.weight.normal_()
    lift.eval()
    path = save_lift(tmp_path / "att.safetensors", lift, _meta(head="attend", head_kernel=5, head_prior="uniform"))
    loaded, meta = load_lift(path)
    assert (meta.head, meta.head_kernel, meta.head_prior, meta.residual) == ("attend", 5, "uniform", False)
    f, img = torch.randn(1, 32, 3, 4), torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        assert torch.equal(loaded(f, img), lift(f, img))
    # a file whose header names a head this version does not know: refused, head named
    _rewrite(path, tmp_path / "future.safetensors", head="transformer")
    with pytest.raises(CheckpointError, match="head 'transformer'"):
        load_lift(tmp_path / "future.safetensors")
    # a header whose kernel does not match the weights: a strict-load error naming the file
    _rewrite(path, tmp_path / "k3.safetensors", head="attend", head_kernel="3")
    with pytest.raises(CheckpointError, match="k3.safetensors"):
        load_lift(tmp_path / "k3.safetensors")


def test_legacy_residual_files_read_as_residual_head(tmp_path):
    lift = LiFT(32, 14, residual=True)
    path = save_lift(tmp_path / "r.safetensors", lift, _meta(residual=True))
    header = _header(path)
    assert header["head"] == "residual" and json.loads(header["residual"]) is True
    _, meta = load_lift(path)
    assert meta.head == "residual" and meta.residual


def test_bad_head_arguments_are_value_errors():
    with pytest.raises(ValueError, match="unknown LiFT head 'big'"):
        LiFT(32, 14, head="big")
    with pytest.raises(ValueError, match="odd"):
        LiFT(32, 14, head="attend", kernel=4)
    with pytest.raises(ValueError, match="prior"):
        LiFT(32, 14, head="attend", prior="gauss")


@pytest.mark.parametrize("arch, n384", [("lift", 1_187_280), ("lift_noimage", 1_033_536), ("resize_conv", 1_070_208)])
def test_archs_sizes_shapes_and_round_trip(tmp_path, arch, n384):
    from liftkit.lift.model import count_parameters

    assert count_parameters(LiFT(384, 14, arch=arch)) == n384
    torch.manual_seed(5)
    lift = LiFT(32, 14, arch=arch).eval()
    f, img = torch.randn(1, 32, 3, 5), torch.randn(1, 3, 42, 70)
    with torch.no_grad():
        out = lift(f, img)
    assert out.shape == (1, 32, 6, 10)
    loaded, meta = load_lift(save_lift(tmp_path / f"{arch}.safetensors", lift, _meta(arch=arch)))
    assert meta.arch == arch
    with torch.no_grad():
        assert torch.equal(loaded(f, img), out)


def test_noimage_and_resize_conv_ignore_the_image():
    torch.manual_seed(6)
    f = torch.randn(1, 32, 3, 4)
    for arch in ("lift_noimage", "resize_conv"):
        lift = LiFT(32, 14, arch=arch).eval()
        with torch.no_grad():
            assert torch.equal(lift(f, torch.randn(1, 3, 42, 56)), lift(f, torch.zeros(1, 3, 42, 56)))
    lift = LiFT(32, 14, arch="lift").eval()
    with torch.no_grad():
        assert not torch.equal(lift(f, torch.randn(1, 3, 42, 56)), lift(f, torch.zeros(1, 3, 42, 56)))


def test_resize_conv_residual_starts_as_bilinear():
    f = torch.randn(1, 32, 3, 4)
    lift = LiFT(32, 14, arch="resize_conv", head="residual").eval()
    with torch.no_grad():
        assert torch.allclose(lift(f, torch.randn(1, 3, 42, 56)), F.interpolate(f, scale_factor=2, mode="bilinear"),
                              atol=1e-6)


def test_random_lift_is_seeded_and_leaves_the_global_rng_alone():
    from liftkit.lift.checkpoint import random_lift

    state = torch.random.get_rng_state()
    a, b, c = random_lift(_meta(), 0), random_lift(_meta(), 0), random_lift(_meta(), 1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.outc.weight, c.outc.weight)
    att = random_lift(_meta(head="attend"), 0)
    assert att.outc.weight.abs().sum() > 0  # not the zero start of a trainable attend head


def test_unknown_arch_in_a_file_is_refused(tmp_path):
    path = save_lift(tmp_path / "a.safetensors", LiFT(32, 14), _meta())
    _rewrite(path, tmp_path / "v9.safetensors", arch="lift_v9")
    with pytest.raises(CheckpointError, match="arch 'lift_v9'"):
        load_lift(tmp_path / "v9.safetensors")
