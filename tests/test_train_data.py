"""liftkit.train.data: listing, split, screening, the S x S input, augmentations, pair making, the batch plan."""

from __future__ import annotations
import os

import numpy as np
import pytest
import torch
from PIL import Image

from liftkit.errors import ConfigError
from liftkit.train.data import (
    Augment,
    EpochPlan,
    ImageFolderData,
    collate_images,
    downsample,
    find_images,
    fit_square,
    listing_digest,
    make_pyramid,
    prepare_image,
    screen_images,
    split_train_val,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


pytestmark = pytest.mark.usefixtures("one_thread")


def _write(path, size=(40, 30), mode="RGB", color=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else 128).save(path)
    return path


# ------------------------------------------------------------------------------------------------ listing / split
def test_find_images_recursive_sorted_and_filtered(tmp_path):
    _write(tmp_path / "train" / "n02" / "b.JPEG")
    _write(tmp_path / "train" / "n01" / "z.png")
    _write(tmp_path / "train" / "n01" / "a.jpg")
    (tmp_path / "train" / "notes.txt").write_text("not an image")
    got = [p.relative_to(tmp_path / "train").as_posix() for p in find_images(tmp_path / "train")]
    assert got == ["n01/a.jpg", "n01/z.png", "n02/b.JPEG"]


def test_find_images_limit_spreads_over_listing(tmp_path):
    for c in range(4):
        for i in range(3):
            _write(tmp_path / f"c{c}" / f"{i}.png")
    got = find_images(tmp_path, limit=4)
    assert [p.parent.name for p in got] == ["c0", "c1", "c2", "c3"]  # one per class folder, not the first four


@pytest.mark.parametrize("make, msg", [
    (lambda d: d / "missing", "does not exist"),
    (lambda d: (d / "f.txt").write_text("x") and d / "f.txt", "is a file"),
    (lambda d: d, "holds no image files"),
])
def test_find_images_errors(tmp_path, make, msg):
    with pytest.raises(ConfigError, match=msg):
        find_images(make(tmp_path))


def test_split_is_deterministic_disjoint_and_seeded(tmp_path):
    paths = [tmp_path / f"{i:03d}.jpg" for i in range(40)]
    tr, va = split_train_val(paths, 0.25, seed=3)
    assert len(va) == 10 and len(tr) == 30 and not set(tr) & set(va) and sorted(tr + va) == sorted(paths)
    tr2, va2 = split_train_val(list(reversed(paths)), 0.25, seed=3)  # input order does not matter
    assert va2 == va and tr2 == tr
    assert split_train_val(paths, 0.25, seed=4)[1] != va
    assert split_train_val(paths, 0.0, seed=3) == (sorted(paths), [])
    assert len(split_train_val(paths[:3], 0.01, seed=0)[1]) == 1  # at least one held out when asked for
    with pytest.raises(ConfigError, match="val_fraction"):
        split_train_val(paths, 1.0, 0)


def test_listing_digest_changes_with_content(tmp_path):
    a = _write(tmp_path / "a.png")
    d1 = listing_digest([a])
    assert listing_digest([a]) == d1
    _write(a, size=(50, 30))
    d2 = listing_digest([a])
    assert d2 != d1
    os.utime(a, (1, 1))  # a fresh copy of the same file (new mtime) keeps its caches and runs
    assert listing_digest([a]) == d2
    b = tmp_path / "b.png"
    b.write_bytes(a.read_bytes())
    assert listing_digest([b]) != d2  # another path is another listing


def test_screen_skips_unreadable_and_too_small(tmp_path):
    good = _write(tmp_path / "good.png", (40, 30))
    gray = _write(tmp_path / "gray.png", (40, 30), mode="L")
    small = _write(tmp_path / "small.png", (10, 40))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.jpg"
    junk.write_text("definitely not a jpeg")
    ok, bad = screen_images([good, gray, small, empty, junk], min_side=14)
    assert ok == [good, gray]
    reasons = dict(bad)
    assert set(reasons) == {small, empty, junk}
    assert "smaller than the 14-px patch" in reasons[small] and "empty" in reasons[empty]
    assert "not an image" in reasons[junk]


def test_dataset_converts_gray_and_palette_and_reports_truncated(tmp_path):
    gray = _write(tmp_path / "g.png", (40, 30), mode="L")
    pal = tmp_path / "p.png"
    Image.new("RGB", (40, 30), (0, 255, 0)).convert("P").save(pal)
    full = _write(tmp_path / "t.jpg", (64, 64))
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(full.read_bytes()[:200])  # valid header, truncated data: passes the scan, fails decoding
    ds = ImageFolderData([gray, pal, trunc], 28, MEAN, STD, min_side=14)
    g = ds[(0, 0)]["image"]
    assert g.shape == (3, 28, 28) and torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    assert torch.allclose(g, torch.full_like(g, 128 / 255 * 2 - 1), atol=1e-6)  # (v/255 - .5)/.5
    p = ds[(1, 0)]["image"]
    assert torch.allclose(p[1], torch.ones(28, 28)) and torch.allclose(p[0], -torch.ones(28, 28))
    bad = ds[(2, 0)]
    assert "error" in bad and "trunc.jpg" in bad["error"]
    batch = collate_images([ds[(0, 0)], bad, ds[(1, 0)]])
    assert batch["index"].tolist() == [0, 1] and batch["image"].shape == (2, 3, 28, 28)
    assert [i for i, _ in batch["errors"]] == [2]


# ------------------------------------------------------------------------------------------------ images
def test_fit_square_crop_and_squash():
    # a 60x30 image, left half black, right half white: the centre crop is the middle 30x30 (half/half)
    arr = np.zeros((30, 60, 3), np.uint8)
    arr[:, 30:] = 255
    img = Image.fromarray(arr)
    c = np.asarray(fit_square(img, 30, "crop"))
    assert c.shape == (30, 30, 3) and c[:, :14].max() == 0 and c[:, 16:].min() == 255
    left = np.asarray(fit_square(img, 30, "crop", crop_at=(0.0, 0.5)))
    assert left.max() == 0  # the left-most window is all black
    sq = fit_square(img, 30, "squash")
    assert sq.size == (30, 30)
    with pytest.raises(ConfigError, match="--resize"):
        fit_square(img, 30, "stretch")


def test_augmentations_are_a_function_of_the_sample_seed():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))
    aug = Augment(color_jitter=True, hflip=True, random_crop=True)
    a = prepare_image(img, 28, MEAN, STD, "crop", aug, sample_seed=11)
    b = prepare_image(img, 28, MEAN, STD, "crop", aug, sample_seed=11)
    c = prepare_image(img, 28, MEAN, STD, "crop", aug, sample_seed=12)
    plain = prepare_image(img, 28, MEAN, STD, "crop", Augment(), sample_seed=11)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, plain)
    assert torch.equal(plain, prepare_image(img, 28, MEAN, STD, "crop", Augment(), sample_seed=99))


# ------------------------------------------------------------------------------------------------ pairs
def _checkerboard(n=16):
    return ((torch.arange(n)[:, None] + torch.arange(n)[None, :]) % 2).float().expand(2, 3, n, n).clone()


def test_strided_is_exact_subsampling():
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(downsample(x, 2, "strided"), x[..., ::2, ::2])
    assert torch.equal(downsample(x, 4, "strided"), x[..., ::4, ::4])
    half, quarter = make_pyramid(x, "strided")
    assert torch.equal(half, x[..., ::2, ::2]) and torch.equal(quarter, x[..., ::4, ::4])


def test_one_pixel_checkerboard_aliased_vs_antialiased():
    x = _checkerboard()
    for f in (2, 4):  # every sample lands on a black pixel: the pattern aliases to flat black, maximally wrong
        assert torch.equal(downsample(x, f, "strided"), torch.zeros(2, 3, 16 // f, 16 // f))
    # box filter: every 2x2 block holds two 0 and two 1
    assert torch.equal(downsample(x, 2, "area"), torch.full((2, 3, 8, 8), 0.5))
    for f in (2, 4):
        aa = downsample(x, f, "antialias")
        assert aa.shape == (2, 3, 16 // f, 16 // f)
        inner = aa[..., 1:-1, 1:-1]
        assert torch.allclose(inner, torch.full_like(inner, 0.5), atol=1e-6)  # uniform grey inside
        assert (aa - 0.5).abs().max() < 0.02  # the renormalised border taps stay close to grey


def test_antialias_matches_box_filter_on_smooth_input():
    ramp = torch.linspace(0, 1, 32)
    x = (ramp[:, None] + ramp[None, :]).expand(1, 3, 32, 32).clone()
    aa, box = downsample(x, 2, "antialias"), downsample(x, 2, "area")
    assert torch.allclose(aa[..., 1:-1, 1:-1], box[..., 1:-1, 1:-1], atol=1e-5)  # both are linear-exact


def test_downsample_errors():
    with pytest.raises(ConfigError, match="--downsample"):
        downsample(torch.zeros(1, 3, 8, 8), 2, "lanczos")
    with pytest.raises(ConfigError, match="multiples of 4"):
        downsample(torch.zeros(1, 3, 10, 10), 4, "area")


# ------------------------------------------------------------------------------------------------ batch plan
def test_epoch_plan_is_pure_and_partitions_the_global_batch():
    plan = EpochPlan(n=23, batch_size=6, seed=5, epoch=2)
    assert plan.num_batches == 3  # 23 // 6, the incomplete last batch is dropped
    batches = plan.local_batches()
    assert batches == EpochPlan(23, 6, 5, 2).local_batches()  # pure function of its fields
    idx = [i for b in batches for i, _ in b]
    assert len(set(idx)) == 18 and all(0 <= i < 23 for i in idx)
    assert plan.local_batches(start=1) == batches[1:]  # resuming mid-epoch skips the consumed batches
    assert EpochPlan(23, 6, 5, 3).local_batches() != batches  # another epoch, another order
    assert EpochPlan(23, 6, 6, 2).local_batches() != batches  # another seed, another order
    # two processes take the two halves of every global batch, sample seeds included
    r0 = EpochPlan(23, 6, 5, 2, rank=0, world=2).local_batches()
    r1 = EpochPlan(23, 6, 5, 2, rank=1, world=2).local_batches()
    for b in range(3):
        assert r0[b] + r1[b] == plan.global_batch(b) == batches[b]
