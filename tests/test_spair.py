"""SPair-71k loader, padding geometry, nearest-neighbour matching, PCK, FLOP counting and the PCK-vs-FLOPs plot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from liftkit.data.spair import category_of, list_pair_names, load_pair, load_split, select_pairs
from liftkit.errors import DatasetError
from liftkit.eval.correspondence import (
    PCKAccumulator, argmax_pixels, bbox_threshold, match_keypoints, pad_geometry, pad_to_square, pck_correct,
    query_points, sample_at_pixels, similarity_maps,
)
from liftkit.eval.flops import _sdpa_flops, count_flops
from liftkit.eval.plots import plot_metric_vs_flops, plot_points
from tests.conftest import SHARED_DATA, require_shared_data

SPAIR = SHARED_DATA / "SPair-71k"
REAL_KPS = {"aeroplane": 14, "cow": 14, "dog": 18, "horse": 18, "motorbike": 14, "pottedplant": 8}


# ------------------------------------------------------------------------------------------ padding geometry
def test_pad_geometry_matches_official_rounding():
    g = pad_geometry(500, 334, 224)  # landscape: width -> 224, height round(224 * 334 / 500) = 150, centred
    assert (g.scale, g.new_width, g.new_height, g.offset_x, g.offset_y) == (0.448, 224, 150, 0, 37)
    g = pad_geometry(333, 500, 224)  # portrait: 149 wide, int((224 - 149) / 2) = 37
    assert (g.new_width, g.new_height, g.offset_x, g.offset_y) == (149, 224, 37, 0)
    g = pad_geometry(300, 300, 224)
    assert (g.new_width, g.new_height, g.offset_x, g.offset_y) == (224, 224, 0, 0)
    np.testing.assert_allclose(pad_geometry(500, 334, 224).apply([[480, 180]]), [[215.04, 117.64]])


@pytest.mark.parametrize("wh", [(500, 334), (333, 500), (375, 375), (17, 301)])
def test_keypoint_transform_round_trip(wh):
    g = pad_geometry(wh[0], wh[1], 224)
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 1, (20, 2)) * np.array(wh)
    np.testing.assert_allclose(g.invert(g.apply(pts)), pts, atol=1e-9)
    # the image corners land on the placed image's corners (up to the official rounding of the short side)
    corners = g.apply([[0, 0], [wh[0], wh[1]]])
    np.testing.assert_allclose(corners[0], [g.offset_x, g.offset_y])
    np.testing.assert_allclose(corners[1], [g.offset_x + g.new_width, g.offset_y + g.new_height], atol=0.5)
    box = g.apply_box([10, 20, 110, 70])
    assert bbox_threshold(box) == pytest.approx(100 * g.scale)


def test_pad_to_square_places_the_image_where_the_keypoints_go():
    img = Image.new("RGB", (100, 50), (255, 255, 255))
    img.putpixel((80, 10), (255, 0, 0))
    canvas, g = pad_to_square(img, 40)  # 100x50 -> 40x20 at y offset 10
    assert canvas.size == (40, 40) and (g.new_width, g.new_height, g.offset_y) == (40, 20, 10)
    a = np.asarray(canvas).astype(int)
    assert a[:10].max() == 0 and a[30:].max() == 0  # zero padding above and below
    assert a[10:30].min() > 150  # the (white) image fills the middle band
    # the red dot is at its transformed position (Lanczos smears it over about a pixel)
    x, y = g.apply([[80.5, 10.5]])[0]
    red = a[..., 0] - a[..., 1]
    ry, rx = np.unravel_index(red.argmax(), red.shape)
    assert abs(rx + 0.5 - x) <= 1 and abs(ry + 0.5 - y) <= 1


# ------------------------------------------------------------------------------------------ matching
def _naive_similarity(src, trg, pts, size, renorm=False):
    """The official computation: upsample both whole maps, index the source pixels, multiply by all targets."""
    s = F.interpolate(F.normalize(src, dim=0)[None], size=(size, size), mode="bilinear")[0]
    t = F.interpolate(F.normalize(trg, dim=0)[None], size=(size, size), mode="bilinear")[0]
    if renorm:
        s, t = F.normalize(s, dim=0), F.normalize(t, dim=0)
    xi = pts[:, 0].astype(np.int64)
    yi = np.floor(pts[:, 1]).astype(np.int64)
    q = s[:, yi, xi].t()
    return (q @ t.reshape(t.shape[0], -1)).reshape(-1, size, size)


def test_sampling_at_pixels_equals_indexing_the_upsampled_map():
    torch.manual_seed(0)
    feats = torch.randn(5, 6, 9)
    up = F.interpolate(feats[None], size=(56, 56), mode="bilinear", align_corners=False)[0]
    ys, xs = torch.meshgrid(torch.arange(56), torch.arange(56), indexing="ij")
    pts = torch.stack([xs.flatten(), ys.flatten()], 1).float()
    got = sample_at_pixels(feats, pts, 56)
    torch.testing.assert_close(got, up[:, ys.flatten(), xs.flatten()].t(), atol=1e-5, rtol=1e-5)


def test_query_points_truncate_unless_subpixel():
    pts = np.array([[3.7, 5.2], [0.0, 223.9], [224.0, 10.5]])
    assert query_points(pts, 224).tolist() == [[3, 5], [0, 223], [223, 10]]  # clamped into the image
    np.testing.assert_allclose(query_points(pts, 224, subpixel=True).numpy(), [[3.7, 5.2], [0, 223], [223, 10.5]],
                               atol=1e-5)


@pytest.mark.parametrize("renorm", [False, True])
def test_similarity_equals_the_official_full_upsampling(renorm):
    torch.manual_seed(1)
    src, trg = torch.randn(16, 8, 8), torch.randn(16, 16, 16)  # different grids, like low vs lift
    pts = np.random.default_rng(1).uniform(0, 63.99, (11, 2))
    got = similarity_maps(src, trg, pts, 64, renorm_after_upsample=renorm)
    ref = _naive_similarity(src, trg, pts, 64, renorm)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # same matches, up to exact ties (border pixels repeat the edge row/column): our pick is a maximum of ref too
    pick = argmax_pixels(got)
    at_pick = ref[torch.arange(len(pts)), pick[:, 1], pick[:, 0]]
    torch.testing.assert_close(at_pick, ref.flatten(1).max(1).values, atol=1e-6, rtol=0)
    if renorm:
        assert got.max() <= 1 + 1e-5  # a true cosine


def test_matching_one_hot_features_has_the_known_answer():
    # 6x6 grid, upsampled 5x to 30x30: patch (i, j) has its centre at pixel (5j + 2, 5i + 2).
    n, s = 6, 30
    src = torch.eye(n * n).reshape(n * n, n, n)
    # target: the same patches shifted one patch right and down (patch (i, j) moves to (i + 1, j + 1))
    trg = torch.zeros_like(src)
    trg[:, 1:, 1:] = src[:, :-1, :-1]
    src_pts = np.array([[5 * 1 + 2, 5 * 1 + 2], [5 * 3 + 2, 5 * 2 + 2], [5 * 0 + 2, 5 * 4 + 2]], dtype=float)
    pred = match_keypoints(src, trg, src_pts, s)
    assert pred.tolist() == [[12, 12], [22, 17], [7, 27]]


def test_argmax_takes_the_first_maximum_in_raster_order():
    sim = torch.zeros(2, 3, 4)
    sim[0, 1, 2] = sim[0, 2, 0] = 1.0
    sim[1, 2, 3] = 2.0
    assert argmax_pixels(sim).tolist() == [[2, 1], [3, 2]]


# ------------------------------------------------------------------------------------------ PCK
def test_pck_thresholds_are_strict_and_scale_with_the_box():
    gt = np.zeros((5, 2))
    pred = np.array([[0, 0], [3, 4], [7, 0], [0, 12], [20, 0]], dtype=float)  # errors 0, 5, 7, 12, 20
    c = pck_correct(pred, gt, threshold=bbox_threshold([10, 10, 60, 110]), alphas=(0.05, 0.1, 0.15))  # 100 px
    assert c.tolist() == [[True, False, False, False, False],   # < 5 (5 itself is not correct)
                          [True, True, True, False, False],     # < 10
                          [True, True, True, True, False]]      # < 15


def test_pck_accumulator_averages_over_categories_and_keypoints():
    acc = PCKAccumulator((0.1,))
    acc.add("a", np.array([[True]]))
    acc.add("b", np.array([[True, False, False]]))
    acc.add("b", np.array([[False, False]]))
    s = acc.summary()
    assert s["per_category"] == {"a": {"pck@0.1": 1.0}, "b": {"pck@0.1": 0.2}}
    assert s["mean_over_categories"]["pck@0.1"] == pytest.approx(0.6)
    assert s["over_keypoints"]["pck@0.1"] == pytest.approx(2 / 6)
    assert s["keypoints"] == {"a": 1, "b": 5} and s["pairs"] == {"a": 1, "b": 2}
    with pytest.raises(ValueError):
        acc.add("a", np.array([True]))


@pytest.mark.real_data
# ------------------------------------------------------------------------------------------ loader, real data
def test_loader_on_the_real_subset():
    names = list_pair_names(SPAIR, "test")
    assert len(names) == 12 and category_of(names[0]) == "aeroplane"
    split = load_split(SPAIR, "test")
    assert split.selected == 12 and not split.skipped
    assert split.categories() == sorted(REAL_KPS)
    kps = {}
    for p in split.pairs:
        kps[p.category] = kps.get(p.category, 0) + p.num_keypoints
    assert kps == REAL_KPS and sum(kps.values()) == 86
    p = next(q for q in split.pairs if q.name == "000271-2009_001056-2008_007604:aeroplane")
    assert p.src_image == SPAIR / "JPEGImages" / "aeroplane" / "2009_001056.jpg"
    assert p.src_size == (500, 334) and p.trg_size == (333, 500)
    assert p.src_kps[0].tolist() == [480, 180] and p.trg_kps[-1].tolist() == [260, 27]
    assert p.trg_bbox.tolist() == [1, 25, 333, 494] and p.kps_ids == ("0", "1", "2", "16", "18", "22", "23")


@pytest.mark.real_data
def test_sampling_is_deterministic_and_without_replacement_by_default():
    names = list_pair_names(SPAIR, "test")
    one = select_pairs(names, 1, seed=0)
    assert len(one) == 6 and len({category_of(n) for n in one}) == 6
    assert one == select_pairs(names, 1, seed=0)
    assert {tuple(select_pairs(names, 1, seed=s)) for s in range(8)} != {tuple(one)}  # the seed matters
    assert select_pairs(names, 5, seed=3) == sorted(names, key=lambda n: (category_of(n), n))  # no duplicates
    # with replacement: the official script's rng.choice(n, N), categories in sorted order, one RandomState
    rng = np.random.RandomState(7)
    expected = []
    for cat in sorted(REAL_KPS):
        group = sorted(n for n in names if category_of(n) == cat)
        expected += [group[i] for i in sorted(rng.choice(len(group), 3))]
    got = select_pairs(names, 3, seed=7, with_replacement=True)
    assert got == expected and len(got) == 18 and len(set(got)) < 18
    with pytest.raises(DatasetError, match="unknown category"):
        select_pairs(names, categories=["zebra"])


# ------------------------------------------------------------------------------------------ bad input
@pytest.fixture
def fake_root(tmp_path):
    """A SPair root in tmp: JSON copies, a symlink to the real images (never copied)."""
    require_shared_data()
    root = tmp_path / "SPair-71k"
    (root / "Layout" / "large").mkdir(parents=True)
    shutil.copy(SPAIR / "Layout" / "large" / "test.txt", root / "Layout" / "large" / "test.txt")
    shutil.copytree(SPAIR / "PairAnnotation", root / "PairAnnotation")
    (root / "JPEGImages").symlink_to(SPAIR / "JPEGImages", target_is_directory=True)
    return root


def _edit(root, name, fn):
    path = root / "PairAnnotation" / "test" / f"{name}.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))
    return path


AERO = "000271-2009_001056-2008_007604:aeroplane"
COW = "006394-2007_005797-2009_003189:cow"
DOG = "007272-2009_001225-2011_002398:dog"


def test_missing_folders_are_named(tmp_path, fake_root):
    with pytest.raises(DatasetError, match="is not a folder"):
        list_pair_names(tmp_path / "nope", "test")
    with pytest.raises(DatasetError, match=r"PairAnnotation/val' is missing"):
        list_pair_names(fake_root, "val")
    with pytest.raises(DatasetError, match="unknown --split"):
        list_pair_names(fake_root, "train")
    (fake_root / "PairAnnotation" / "test" / f"{AERO}.json").unlink()
    with pytest.raises(DatasetError, match=rf"{AERO}.json' is missing"):
        load_split(fake_root)


def test_malformed_json_is_named(fake_root):
    path = fake_root / "PairAnnotation" / "test" / f"{AERO}.json"
    path.write_text(path.read_text()[:100])
    with pytest.raises(DatasetError, match=r"000271.*is not valid JSON"):
        load_pair(fake_root, "test", AERO)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(trg_imname="missing.jpg"), r"image '.*aeroplane/missing.jpg' is missing"),
    (lambda d: d["src_kps"].__setitem__(2, [501, 10]), r"src_kps\[2\] = \(501, 10\) lies outside the 500x334 image"),
    (lambda d: d["trg_kps"].__setitem__(0, [-1, 10]), r"trg_kps\[0\] = \(-1, 10\) lies outside"),
    (lambda d: d.update(src_imsize=[334, 500, 3]), r"src_imsize says 334x500 but .*2009_001056.jpg' is 500x334"),
    (lambda d: d["trg_kps"].pop(), "7 src_kps but 6 trg_kps"),
    (lambda d: d.update(trg_bndbox=[10, 10, 5, 20]), "trg_bndbox .* is empty or outside"),
    (lambda d: d.update(category="cow"), "category 'cow' does not match the pair name's 'aeroplane'"),
    (lambda d: d.pop("src_kps"), "lacks the field.* src_kps"),
    (lambda d: d.update(src_kps=[[1, "a"]]), "'src_kps' must be a list of"),
])
def test_bad_annotations_raise_one_line_naming_the_file(fake_root, edit, message):
    _edit(fake_root, AERO, edit)
    with pytest.raises(DatasetError, match=message) as err:
        load_pair(fake_root, "test", AERO)
    assert "\n" not in str(err.value)
    assert AERO in str(err.value) or "missing.jpg" in str(err.value)


def test_skip_bad_counts_and_keeps_the_rest(fake_root):
    _edit(fake_root, AERO, lambda d: d.update(trg_imname="missing.jpg"))
    _edit(fake_root, COW, lambda d: d["src_kps"].__setitem__(0, [9999, 0]))
    (fake_root / "PairAnnotation" / "test" / f"{DOG}.json").write_text("{not json")
    with pytest.raises(DatasetError, match="missing.jpg"):
        load_split(fake_root)
    split = load_split(fake_root, skip_bad=True)
    assert len(split.pairs) == 9 and split.selected == 12 and len(split.skipped) == 3
    assert {p.name for p in split.pairs}.isdisjoint({AERO, COW, DOG})
    assert any("not valid JSON" in s for s in split.skipped)


# ------------------------------------------------------------------------------------------ FLOPs and plot
def test_flop_counts_are_exact_for_known_layers():
    lin = torch.nn.Linear(10, 7)
    total, per_op = count_flops(lambda: lin(torch.zeros(3, 10)))
    assert total == 2 * 3 * 10 * 7 and set(per_op) == {"aten.addmm"}
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    assert count_flops(lambda: conv(torch.zeros(1, 3, 5, 6)))[0] == 2 * 4 * 3 * 9 * 5 * 6


def test_attention_flops_counted_on_cpu():
    q, k, v = torch.randn(1, 2, 33, 8), torch.randn(1, 2, 33, 8), torch.randn(1, 2, 33, 8)
    expected = 2 * 2 * 33 * 33 * 8 * 2
    assert _sdpa_flops(q.shape, k.shape, v.shape) == expected
    assert count_flops(lambda: (q @ k.transpose(-1, -2)).softmax(-1) @ v)[0] == expected
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v))[0] == expected


def test_plot_points_and_png(tmp_path):
    def rec(g, p):
        return {"gflops_per_image": g, "pck": {"mean_over_categories": {"pck@0.1": p}}}

    methods = {"low": rec(10, 0.2), "lift2": rec(14, 0.3), "lift": rec(12, 0.28), "highres": rec(40, 0.25),
               "broken": {"pck": {}}}
    pts = plot_points(methods)
    assert pts == {"low": [("low", 10.0, 0.2)], "lift": [("lift", 12.0, 0.28), ("lift2", 14.0, 0.3)],
                   "highres": [("highres", 40.0, 0.25)]}
    out = plot_metric_vs_flops(methods, tmp_path / "sub" / "p.png", title="t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        assert im.size[0] > 300
    with pytest.raises(ValueError):
        plot_metric_vs_flops({"x": {"pck": {}}}, tmp_path / "q.png")
