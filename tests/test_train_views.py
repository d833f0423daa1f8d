"""Augmented targets in the feature cache (--cache_views, --scale_min) and the attend head in train_lift.py:
view 0 is the plain input, the other views are pure functions of (seed, row), the cache holds every view, validation
reads view 0 only, and the flags are checked up front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from liftkit.lift.checkpoint import load_lift
from liftkit.train.data import Augment, ImageFolderData, fit_square
from liftkit.train.views import ViewsData
from tests.conftest import SHARED_DATA
from train_lift import main

SAMPLES = SHARED_DATA / "imagenet-sample-images"
TINY = ["--model_type", "dino_vits16", "--random_init", "--imsize", "64", "--num_workers", "0", "--no_progress"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(shared_data, k):
    return sorted((shared_data / "imagenet-sample-images").glob("*.JPEG"))[:k]


def test_fit_square_zoom_crops_a_fraction_of_the_short_side():
    from PIL import Image

    img = Image.new("RGB", (200, 100))
    img.paste((255, 0, 0), (0, 0, 100, 100))  # left half red, right half black
    full = fit_square(img, 50, "crop", (0.0, 0.5))
    zoomed = fit_square(img, 50, "crop", (0.0, 0.5), zoom=2.0)  # the crop covers 50 of the 100-px short side
    import numpy as np

    assert np.asarray(full)[:, :, 0].mean() > 250  # crop (0..100) of a 100-px-high image: all red
    assert np.asarray(zoomed)[:, :, 0].mean() > 250  # the left quarter at 2x: still red
    right = fit_square(img, 50, "crop", (1.0, 0.5), zoom=2.0)
    assert np.asarray(right)[:, :, 0].mean() < 5


def test_views_rows_view0_plain_and_others_fixed_by_seed(shared_data):
    paths = _images(shared_data, 3)
    aug = Augment(color_jitter=True, hflip=True, random_crop=True, scale_min=0.5)
    views = ViewsData(paths, 56, MEAN, STD, 14, "crop", aug, views=3, seed=7)
    plain = ImageFolderData(paths, 56, MEAN, STD, 14, "crop", Augment())
    assert len(views) == 9 and views.paths[4] == paths[1]
    assert torch.equal(views[(3, 123)]["image"], plain[(1, 0)]["image"])  # row 3 = view 0 of image 1
    a, b = views[(4, 0)]["image"], views[(4, 999)]["image"]  # the sampler's seed is ignored: the row decides
    assert torch.equal(a, b) and not torch.equal(a, views[(3, 0)]["image"])
    again = ViewsData(paths, 56, MEAN, STD, 14, "crop", aug, views=3, seed=7)
    assert torch.equal(again[(5, 0)]["image"], views[(5, 0)]["image"])
    other = ViewsData(paths, 56, MEAN, STD, 14, "crop", aug, views=3, seed=8)
    assert not torch.equal(other[(5, 0)]["image"], views[(5, 0)]["image"])
    assert views.rows([paths[2], paths[0]]) == [6, 7, 8, 0, 1, 2]
    assert views.rows([paths[2]], all_views=False) == [6]


def test_train_with_cached_views_and_attend_head(tmp_path, shared_data):
    data = tmp_path / "photos"
    data.mkdir()
    for p in _images(shared_data, 7):
        (data / p.name).symlink_to(p)
    out = tmp_path / "run"
    rc = main(["--data_root", str(data), "--output_dir", str(out), "--epochs", "2", "--batch_size", "4",
               "--val_fraction", "0.3", "--cache_dir", str(tmp_path / "cache"), "--cache_views", "3",
               "--random_crop", "--hflip", "--scale_min", "0.6", "--head", "attend",
               "--loss", "cosine_raw_centered"] + TINY)
    assert rc == 0
    events = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    data_ev = next(e for e in events if e["event"] == "data")
    assert (data_ev["n_train"], data_ev["n_val"]) == (5, 2)
    steps = [e for e in events if e["event"] == "step"]
    assert len(steps) == 2 * (5 * 3 // 4)  # 15 training rows (3 views each) per epoch, batches of 4
    built = next(e for e in events if e["event"] == "cache_built")
    assert built["images"] == 7 * 3
    lift, meta = load_lift(out / "lift_dino_vits16.safetensors")
    assert (meta.head, meta.head_kernel, meta.head_prior) == ("attend", 3, "bilinear")
    args = meta.train_config["args"]
    assert (args["cache_views"], args["scale_min"], args["head"]) == (3, 0.6, "attend")
    # a second run with the same flags reuses the cache; another --seed builds another one (other views)
    rc = main(["--data_root", str(data), "--output_dir", str(tmp_path / "run2"), "--epochs", "1", "--batch_size", "4",
               "--val_fraction", "0.3", "--cache_dir", str(tmp_path / "cache"), "--cache_views", "3",
               "--random_crop", "--hflip", "--scale_min", "0.6", "--head", "attend"] + TINY)
    assert rc == 0
    assert any(json.loads(x)["event"] == "cache_reused" for x in (tmp_path / "run2" / "log.jsonl").read_text().splitlines())


@pytest.mark.parametrize("extra, msg", [
    (["--cache_views", "3"], "--cache_views 3 needs --cache_dir and an augmentation"),
    (["--cache_dir", "C", "--hflip"], "pass --cache_views N"),
    (["--scale_min", "0.01"], "--scale_min 0.01 must be in [0.1, 1]"),
    (["--head", "attend", "--head_kernel", "4"], "--head_kernel 4 must be odd"),
    (["--head", "attend", "--residual"], "--residual contradicts --head attend"),
])
def test_bad_view_and_head_flags_are_one_line_errors(tmp_path, shared_data, capsys, extra, msg):
    extra = [str(tmp_path / "c") if x == "C" else x for x in extra]
    rc = main(["--data_root", str(shared_data / "imagenet-sample-images"), "--output_dir", str(tmp_path / "o")]
              + TINY + extra)
    assert rc == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()][-1]
    assert msg in err
    assert not (tmp_path / "o").exists()  # refused before anything was written


@pytest.mark.parametrize("arch", ["resize_conv", "lift_noimage"])
def test_ablation_archs_train_and_are_refused_elsewhere(tmp_path, shared_data, arch):
    from extractor import ViTExtractor
    from liftkit.errors import IncompatibleLiftError

    data = tmp_path / "photos"
    data.mkdir()
    for p in _images(shared_data, 5):
        (data / p.name).symlink_to(p)
    out = tmp_path / "run"
    assert main(["--data_root", str(data), "--output_dir", str(out), "--epochs", "1", "--batch_size", "4",
                 "--val_fraction", "0.2", "--arch", arch] + TINY) == 0
    path = out / "lift_dino_vits16.safetensors"
    lift, meta = load_lift(path)
    assert meta.arch == arch and meta.train_config["args"]["arch"] == arch
    ext = ViTExtractor("dino_vits16", random_init=True, lift_path=path)
    assert ext.dense_features(torch.randn(1, 3, 48, 64), "lift").shape == (1, 384, 6, 8)
    with pytest.raises(IncompatibleLiftError, match="backbone"):
        ViTExtractor("dino_vits8", random_init=True, lift_path=path)
