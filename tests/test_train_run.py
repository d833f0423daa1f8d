"""train_lift.py end to end (in-process, tiny random ViT-S/16 at S=64): a flat folder trains, an ImageNet layout
with --val_root and the feature cache, the outputs and their metadata, and one clear error per bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from extractor import ViTExtractor
from liftkit.errors import IncompatibleLiftError
from liftkit.lift.checkpoint import load_lift
from tests.conftest import SHARED_DATA, require_shared_data
from train_lift import main

SAMPLES = SHARED_DATA / "imagenet-sample-images"
GRAY = "n02096051_Airedale.JPEG"  # a grayscale JPEG of the sample
TINY = ["--model_type", "dino_vits16", "--random_init", "--imsize", "64", "--num_workers", "0", "--no_progress"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _link(dst: Path, names):
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        (dst / n).symlink_to(SAMPLES / n)


def _samples(k, skip=0):
    require_shared_data(SAMPLES)
    return sorted(p.name for p in SAMPLES.iterdir() if p.name != GRAY)[skip:skip + k]


def _events(out: Path, kind: str):
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return [e for e in lines if e["event"] == kind]


def _last_err(capsys) -> str:
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    return lines[-1]


@pytest.fixture(scope="module")
def flat_run(tmp_path_factory):
    """A flat, non-ImageNet folder: 9 real photos (one grayscale), a palette PNG, a text file named .jpg and an
    image smaller than the patch. Trained for 4 epochs."""
    root = tmp_path_factory.mktemp("flat")
    data = root / "photos"
    _link(data, _samples(8) + [GRAY])
    Image.new("RGB", (80, 60), (0, 128, 255)).convert("P").save(data / "palette.png")
    (data / "broken.jpg").write_text("not a jpeg")
    Image.new("RGB", (10, 90), (9, 9, 9)).save(data / "tiny.png")
    out = root / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    rc = main(["--data_root", str(data), "--output_dir", str(out), "--epochs", "4", "--batch_size", "4",
               "--val_fraction", "0.2", "--save_every", "1", "--seed", "1"] + TINY)
    torch.set_num_threads(n)
    return rc, data, out


def test_flat_folder_trains_and_loss_decreases(flat_run):
    rc, data, out = flat_run
    assert rc == 0
    data_ev = _events(out, "data")[0]
    # 12 files, 2 skipped at the scan, round(0.2 * 10) = 2 held out for validation
    assert (data_ev["n_listed"], data_ev["n_train"], data_ev["n_val"], data_ev["n_skipped_at_scan"]) == (12, 8, 2, 2)
    steps = _events(out, "step")
    assert [s["step"] for s in steps] == list(range(1, 9))  # 2 steps of 4 images (last partial batch dropped) x 4
    first, last = [s["loss"] for s in steps[:2]], [s["loss"] for s in steps[-2:]]
    assert sum(last) < 0.8 * sum(first)
    for s in steps:
        assert s["loss"] == pytest.approx(s["loss_half"] + s["loss_quarter"], rel=1e-5)
    skipped = {Path(e["path"]).name: e["reason"] for e in _events(out, "skipped")}
    assert set(skipped) == {"broken.jpg", "tiny.png"} and "smaller than the 16-px patch" in skipped["tiny.png"]
    vals = _events(out, "val")
    assert len(vals) == 4
    for v in vals:  # every method scored on both pairs, all valid cosines
        for pair in ("half", "quarter"):
            for m in ("lift", "bilinear", "nearest"):
                assert -1.0 <= v[f"{pair}/{m}"] <= 1.0
    assert vals[0]["half/bilinear"] == pytest.approx(vals[-1]["half/bilinear"], abs=1e-6)  # baselines fixed
    assert vals[-1]["half/lift"] > vals[0]["half/lift"]  # LiFT improves


def test_outputs_metadata_and_refusal_elsewhere(flat_run):
    rc, data, out = flat_run
    final = out / "lift_dino_vits16.safetensors"
    assert final.is_file() and (out / "lift_dino_vits16_epoch004.safetensors").is_file()
    assert len(list((out / "checkpoints").glob("step_*.pt"))) == 3  # --keep_checkpoints 3
    lift, meta = load_lift(final)
    assert (meta.backbone, meta.layer, meta.facet, meta.channel_order) == ("dino_vits16", 11, "key", "dim_major")
    assert (meta.patch_size, meta.channels, meta.backbone_weights_sha256) == (16, 384, "random-init")
    assert meta.mean == (0.485, 0.456, 0.406)
    cfg = meta.train_config
    assert cfg["args"]["imsize"] == 64 and cfg["data"]["n_train"] == 8 and cfg["steps"] == 8
    assert cfg["data"]["n_skipped"] == 2 and set(cfg["val"]) >= {"half/lift", "quarter/bilinear"}
    # the epoch-4 file and the final file hold the same weights
    lift4, _ = load_lift(out / "lift_dino_vits16_epoch004.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(lift.state_dict().values(), lift4.state_dict().values()))
    ext = ViTExtractor("dino_vits16", random_init=True, lift_path=final)
    x = torch.randn(1, 3, 32, 48)
    assert ext.dense_features(x, "lift").shape == (1, 384, 4, 6)
    with pytest.raises(IncompatibleLiftError, match="layer"):
        ViTExtractor("dino_vits16", layer=5, random_init=True, lift_path=final)


def test_imagenet_layout_val_root_and_feature_cache(tmp_path, capsys):
    names = _samples(10, skip=20)
    for i, n in enumerate(names[:8]):
        _link(tmp_path / "imagenet" / "train" / n.split("_")[0], [n])
    _link(tmp_path / "imagenet" / "val" / "n00000000", names[8:])
    cache = tmp_path / "cache"
    base = ["--data_root", str(tmp_path / "imagenet" / "train"), "--val_root", str(tmp_path / "imagenet" / "val"),
            "--epochs", "1", "--batch_size", "4", "--cache_dir", str(cache)] + TINY
    assert main(base + ["--output_dir", str(tmp_path / "a")]) == 0
    built = {e["split"]: e for e in _events(tmp_path / "a", "cache_built")}
    assert built["data_root"]["images"] == 8 and built["val_root"]["images"] == 2
    assert _events(tmp_path / "a", "data")[0]["n_val"] == 2
    # same settings: the cache is reused, the backbone is not run, the result is the same
    assert main(base + ["--output_dir", str(tmp_path / "b")]) == 0
    assert {e["split"] for e in _events(tmp_path / "b", "cache_reused")} == {"data_root", "val_root"}
    assert not _events(tmp_path / "b", "cache_built")
    la, _ = load_lift(tmp_path / "a" / "lift_dino_vits16.safetensors")
    lb, _ = load_lift(tmp_path / "b" / "lift_dino_vits16.safetensors")
    assert all(torch.equal(x, y) for x, y in zip(la.state_dict().values(), lb.state_dict().values()))
    # a split of --data_root instead of --val_root: the same cache (it covers every usable image; splits are rows)
    split = ["--data_root", str(tmp_path / "imagenet" / "train"), "--val_fraction", "0.25", "--epochs", "1",
             "--batch_size", "4", "--cache_dir", str(cache), "--output_dir", str(tmp_path / "s")] + TINY
    assert main(split) == 0
    assert [e["split"] for e in _events(tmp_path / "s", "cache_reused")] == ["data_root"]
    assert _events(tmp_path / "s", "data")[0]["n_val"] == 2 and _events(tmp_path / "s", "val")[0]["half/lift"] > -1
    # another layer: another cache folder, never the stale one
    assert main(base + ["--output_dir", str(tmp_path / "c"), "--layer", "5"]) == 0
    assert len(_events(tmp_path / "c", "cache_built")) == 2
    assert len([d for d in cache.iterdir() if d.is_dir()]) == 4
    # cached targets equal the live ones up to float16 rounding: the first step's loss agrees
    assert main(base[:-len(TINY) - 2] + TINY + ["--output_dir", str(tmp_path / "d")]) == 0
    la_step = _events(tmp_path / "a", "step")[0]["loss"]
    ld_step = _events(tmp_path / "d", "step")[0]["loss"]
    assert la_step == pytest.approx(ld_step, abs=2e-3)


def _expect_error(capsys, argv, msg):
    assert main(argv) == 2
    last = _last_err(capsys)
    assert last.startswith("error: ") and msg in last, last


def test_bad_inputs_give_one_line_errors(tmp_path, capsys, flat_run):
    _, data, out = flat_run
    (tmp_path / "empty").mkdir()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_text("x")
    (junk / "b.png").write_bytes(b"")
    (tmp_path / "file").write_text("x")
    o = ["--output_dir", str(tmp_path / "o")]
    _expect_error(capsys, ["--data_root", str(tmp_path / "empty")] + o + TINY, "holds no image files")
    _expect_error(capsys, ["--data_root", str(tmp_path / "nope")] + o + TINY, "does not exist")
    _expect_error(capsys, ["--data_root", str(junk)] + o + TINY, "none of the 2 image files")
    _expect_error(capsys, ["--data_root", str(data)] + o + TINY + ["--imsize", "100"],
                  "--imsize 100 does not fit the 16-px patch of dino_vits16: S/4 must be a whole number of patches")
    _expect_error(capsys, ["--data_root", str(data), "--output_dir", str(tmp_path / "file" / "sub")] + TINY,
                  "cannot write to --output_dir")
    _expect_error(capsys, ["--data_root", str(data)] + o + TINY + ["--cache_dir", str(tmp_path / "c"), "--augment"],
                  "cannot be combined with --augment")
    _expect_error(capsys, ["--data_root", str(data)] + o + TINY + ["--amp", "bf16", "--device", "cpu"],
                  "--amp bf16 needs a CUDA device")
    _expect_error(capsys, ["--data_root", str(data)] + o + TINY + ["--batch_size", "64"],
                  "fewer than --batch_size 64")
    # the finished run's folder: no silent overwrite, and no resuming with another backbone or layer
    again = ["--data_root", str(data), "--output_dir", str(out), "--epochs", "5", "--batch_size", "4",
             "--val_fraction", "0.2", "--seed", "1"]
    _expect_error(capsys, again + TINY, "already holds checkpoints")
    _expect_error(capsys, again + TINY + ["--resume", "--layer", "5"], "layer=11 but this run has layer=5")
    tiny8 = [a if a != "dino_vits16" else "dino_vits8" for a in TINY]
    _expect_error(capsys, again + tiny8 + ["--resume"], "backbone='dino_vits16' but this run has backbone='dino_vits8'")


def test_residual_lift_is_trained_and_recorded(tmp_path, flat_run):
    _, data, _ = flat_run
    out = tmp_path / "res"
    assert main(["--data_root", str(data), "--output_dir", str(out), "--epochs", "1", "--batch_size", "4",
                 "--residual"] + TINY) == 0
    lift, meta = load_lift(out / "lift_dino_vits16.safetensors")
    assert meta.residual is True and lift.residual is True and meta.train_config["args"]["residual"] is True
    ext = ViTExtractor("dino_vits16", random_init=True, lift_path=out / "lift_dino_vits16.safetensors")
    assert ext.lift.residual is True
