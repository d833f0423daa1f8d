"""Hostile inputs (issue #14), outputs and weight files: every case ends in exit code 1 or 2 with one line naming the
item, never a traceback, no temporary or partial file left behind, and nothing large allocated.

Fast: a random patch-16 backbone (``--random_init``), 48-px images, no LiFT unless the case is about LiFT files.
"""

from __future__ import annotations

import errno
import os

import pytest
import torch
from PIL import Image

import lift_extractor
from liftkit.errors import OutputError
from liftkit.io import feature_files, outputs
from liftkit.io.feature_files import load_features, save_features

FAST = ["--model_type", "dino_vits16", "--random_init", "--no_lift", "--load_size", "32", "--quiet",
        "--device", "cpu"]


@pytest.fixture(autouse=True)
def tiny_backbones(monkeypatch):
    """Every command builds tiny timm models (3 ms instead of seconds for a random ViT-S)."""
    import functools

    import liftkit.extractor as extractor_module
    from liftkit.backbones.factory import create_backbone

    monkeypatch.setattr(extractor_module, "create_backbone", functools.partial(
        create_backbone, model_kwargs=dict(embed_dim=48, depth=2, num_heads=4)))


def _images(folder, names=("a.png", "b.png", "c.png")):
    folder.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        Image.new("RGB", (48, 40), (30 * i, 90, 200)).save(folder / n)
    return folder


def _errors(err: str):
    return [line for line in err.splitlines() if line.startswith("error") or line.startswith("  - ")]


def _no_temp(folder) -> None:
    left = [p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".lk-")]
    assert left == [], left


def _run(argv, capsys):
    rc = lift_extractor.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


# ---------------------------------------------------------------- class 1: output side, refused up front (exit 2)

@pytest.mark.parametrize("case", ["output_path_is_folder", "output_path_under_file", "output_dir_is_file",
                                  "output_dir_under_file", "output_path_name_too_long", "output_dir_not_writable"])
def test_output_flags_refused_before_loading(case, tmp_path, capsys, monkeypatch):
    img = _images(tmp_path / "in") / "a.png"
    afile = tmp_path / "afile"
    afile.write_text("x")
    flag, value, message = {
        "output_path_is_folder": ("--output_path", tmp_path, "it is a folder; give a file name"),
        "output_path_under_file": ("--output_path", afile / "x.pt", "lies under the regular file"),
        "output_dir_is_file": ("--output_dir", afile, "is a file, not a folder"),
        "output_dir_under_file": ("--output_dir", afile / "sub", "lies under the regular file"),
        "output_path_name_too_long": ("--output_path", tmp_path / ("n" * 300 + ".pt"), "over the file system's"),
        "output_dir_not_writable": ("--output_dir", tmp_path / "ro" / "sub", "is not writable"),
    }[case]
    if case == "output_dir_not_writable":  # root ignores chmod: shim os.access as a read-only folder would answer
        (tmp_path / "ro").mkdir()
        real = os.access
        monkeypatch.setattr(outputs.os, "access", lambda p, m: False if str(p).endswith("ro") else real(p, m))
    built = []
    monkeypatch.setattr("liftkit.cli.options.ViTExtractor", lambda *a, **k: built.append(1))
    rc, err = _run(["--image_path", str(img), flag, str(value)] + FAST, capsys)
    lines = _errors(err)
    assert rc == 2 and len(lines) == 1 and message in lines[0] and flag in lines[0], err
    assert built == []  # refused before the backbone is built
    _no_temp(tmp_path)


@pytest.mark.parametrize("errno_code,message", [(errno.ENOSPC, "No space left on device; free some space"),
                                                (errno.EROFS, "Read-only file system"),
                                                (errno.EACCES, "Permission denied; make the folder writable")])
@pytest.mark.parametrize("fmt", ["pt", "safetensors", "npy"])
def test_write_failure_mid_batch_is_one_line_per_item_and_batch_goes_on(fmt, errno_code, message, tmp_path, capsys,
                                                                        monkeypatch):
    src = _images(tmp_path / "in")
    out = tmp_path / "out"
    real_save, real_torch_save, real_np_save = feature_files.save_features, torch.save, feature_files.np.save

    def failing(fn):
        def wrapper(obj, f, *a, **k):
            target = str(getattr(f, "name", f))
            fn(obj, f, *a, **k)  # a partial temporary file exists when the disk fills up
            if "b.png" in current[0]:
                raise OSError(errno_code, os.strerror(errno_code), target)
        return wrapper

    current = [""]

    def tracking_save(path, *a, **k):
        current[0] = str(path.with_suffix(".png"))
        return real_save(path, *a, **k)

    monkeypatch.setattr("liftkit.cli.extract_pipeline.save_features", tracking_save)
    monkeypatch.setattr(feature_files.torch, "save", failing(real_torch_save))
    monkeypatch.setattr(feature_files.np, "save", failing(real_np_save))
    import safetensors.torch as st

    real_st = st.save_file
    monkeypatch.setattr(st, "save_file", lambda t, p, metadata=None: failing(
        lambda obj, f: real_st(obj, f, metadata=metadata))(t, p))
    rc, err = _run(["--image_path", str(src), "--output_dir", str(out), "--format", fmt] + FAST, capsys)
    lines = _errors(err)
    assert rc == 1 and "1 of 3 image(s) failed" in lines[0], err
    assert len(lines) == 2 and message in lines[1] and f"b.{fmt}" in lines[1]  # the item: its output file
    assert sorted(p.name for p in out.iterdir() if p.name != "manifest.jsonl") == sorted(
        [f"a.{fmt}", f"c.{fmt}"] + ([f"a.{fmt}.json", f"c.{fmt}.json"] if fmt == "npy" else []))
    _no_temp(tmp_path)
    assert load_features(out / f"a.{fmt}")[0].shape == (48, 2, 2)


def test_output_name_too_long_once_per_item(tmp_path, capsys):
    """A 250-byte image name fits, its output name does too, the old ``.<name>.<pid>.tmp`` did not."""
    long_name = "x" * 248 + ".png"  # output x*248.pt = 251 bytes: fits NAME_MAX 255, as does the hashed temp name
    src = _images(tmp_path / "in", ("a.png", long_name))
    out = tmp_path / "out"
    rc, err = _run(["--image_path", str(src), "--output_dir", str(out)] + FAST, capsys)
    assert rc == 0, err
    assert sorted(p.name for p in out.glob("*.pt")) == sorted(["a.pt", "x" * 248 + ".pt"])
    # and a name that no longer fits once the extension changes: one line for it, the rest extracted
    # y*251.png is 255 bytes; y*251.safetensors is 263
    src2 = tmp_path / "in2"
    src2.mkdir()
    Image.new("RGB", (48, 40)).save(src2 / "ok.png")
    Image.new("RGB", (48, 40)).save(src2 / ("y" * 251 + ".png"))
    rc, err = _run(["--image_path", str(src2), "--output_dir", str(out), "--format", "safetensors"] + FAST, capsys)
    lines = _errors(err)
    assert rc == 1 and len(lines) == 2 and "y" * 40 in lines[1] and "over the file system's" in lines[1], err
    assert (out / "ok.safetensors").exists()
    _no_temp(tmp_path)


def test_save_features_library_contract(tmp_path, monkeypatch):
    t = torch.arange(24.0).reshape(2, 3, 4)
    p = save_features(tmp_path / "deep" / "f.pt", t, {"k": 1}, "pt")
    assert torch.equal(load_features(p)[0], t) and load_features(p)[1] == {"k": "1"}
    with pytest.raises(OutputError, match="Is a directory; it is a folder"):
        save_features(tmp_path / "deep", t, {}, "pt")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="file"):
        save_features(tmp_path / "file" / "f.pt", t, {}, "safetensors")
    with pytest.raises(OutputError, match="File name too long"):
        save_features(tmp_path / ("z" * 256 + ".pt"), t, {}, "pt")
    assert outputs.temp_name(tmp_path / ("z" * 255)).name.startswith(".lk-")
    assert len(outputs.temp_name(tmp_path / ("z" * 255)).name) < 40
    _no_temp(tmp_path)


# ---------------------------------------------------------------- class 2: empty / truncated weight files (exit 2)

def _weight_files(folder):
    """0 bytes, a few bytes, and half of a real .pth / .safetensors file."""
    from safetensors.torch import save_file

    folder.mkdir()
    good_pth, good_st = folder / "good.pth", folder / "good.safetensors"
    torch.save({"w": torch.zeros(64, 64)}, good_pth)
    save_file({"w": torch.zeros(64, 64)}, str(good_st))
    files = {}
    for good in (good_pth, good_st):
        data = good.read_bytes()
        for label, n in (("empty", 0), ("stub", 7), ("half", len(data) // 2)):
            f = folder / f"{label}{good.suffix}"
            f.write_bytes(data[:n])
            files[f"{label}{good.suffix}"] = f
    return files


WEIGHT_CASES = [f"{lab}{suf}" for suf in (".pth", ".safetensors") for lab in ("empty", "stub", "half")]


@pytest.mark.parametrize("flag", ["--lift_path", "--backbone_weights"])
@pytest.mark.parametrize("case", WEIGHT_CASES)
def test_empty_or_truncated_weight_file_one_line(flag, case, tmp_path, capsys, tmp_path_factory):
    f = _weight_files(tmp_path / "w")[case]
    img = _images(tmp_path / "in") / "a.png"
    if flag == "--lift_path":
        argv = [a for a in FAST if a != "--no_lift"] + ["--lift_path", str(f)]
    else:
        argv = [a for a in FAST if a != "--random_init"] + ["--backbone_weights", str(f)]
    rc, err = _run(["--image_path", str(img), "--output_dir", str(tmp_path / "out")] + argv, capsys)
    lines = _errors(err)
    assert rc == 2 and len(lines) == 1, err
    assert str(f) in lines[0] and ("it is empty (0 bytes)" if case.startswith("empty") else "it is truncated") in lines[0]
    assert ("--lift_path" if flag == "--lift_path" else "--backbone_weights") in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---------------------------------------------------------------- class 4: sizes refused before allocating (exit 2)

def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cmd(name):
    import eval_davis
    import eval_spair
    import eval_tokencut
    import eval_visualize_feats
    import train_lift

    return {"extract": lift_extractor.main, "spair": eval_spair.main, "tokencut": eval_tokencut.main,
            "davis": eval_davis.main, "visualize": eval_visualize_feats.main, "train": train_lift.main}[name]


def _size_cases(tmp_path):
    img = str(_images(tmp_path / "in") / "a.png")
    one = _images(tmp_path / "one", ("a.png",))
    backbone = ["--model_type", "dino_vits16", "--random_init", "--quiet", "--device", "cpu"]
    ext = ["--image_path", img, "--output_dir", str(tmp_path / "out")] + backbone
    return {  # case -> (command, argv, exit code, words the one line must hold)
        "extract_lift_iter_12": ("extract", ext + ["--upsample", "bilinear", "--lift_iter", "12"], 2,
                                 ["bilinear12 output", "4.6 TB", "lower --lift_iter"]),
        "extract_load_size_100000": ("extract", ext + ["--no_lift", "--load_size", "100000"], 2,
                                     ["attention (B, heads, T, T) at 100000x100000", "lower --load_size"]),
        "extract_batch_size": ("extract", ext + ["--no_lift", "--load_size", "224", "--batch_size", "2",
                                                 "--max_memory_gb", "0.0005"], 2, ["lower --load_size"]),
        "extract_per_image_no_resize": ("extract", ext + ["--upsample", "nearest", "--lift_iter", "7",
                                                          "--load_size", "0", "--max_memory_gb", "0.01"], 1,
                                        ["a.png: nearest7 output (B, C, 128h, 128w) = 1 x 384 x 256 x 384 x 4 B = 144.0 MB"]),
        "spair_imsize_100000": ("spair", ["--data_root", "/nonexistent", "--imsize", "100000"] + backbone, 2,
                                ["at 100000x100000", "lower --imsize"]),
        "spair_lift9": ("spair", ["--data_root", "/nonexistent", "--methods", "low,bilinear9"] + backbone, 2,
                        ["bilinear9 output", "in --methods"]),
        "tokencut_imsize_100002": ("tokencut", ["--dataset", "folder", "--tau", "0.2", "--data_root", str(tmp_path / "in"),
                                                "--lift_path", "none", "--methods", "low", "--imsize", "100002"]
                                   + backbone, 2, ["at 100000x100000", "lower --imsize"]),
        "tokencut_eigen_per_image": ("tokencut", ["--dataset", "folder", "--tau", "0.2", "--data_root", str(one),
                                                  "--lift_path", "none", "--methods", "low,bilinear6",
                                                  "--max_memory_gb", "4"] + backbone, 1,
                                     ["a: TokenCut affinity of bilinear6 (N, N), N = 24576 cells", "4.5 GB"]),
        "visualize_cka_scales": ("visualize", ["--image_path", img, "--output_dir", str(tmp_path / "out"),
                                               "--lift_path", "none", "--cka_scales", "56,100000"] + backbone, 2,
                                 ["at 100000x100000", "lower the largest of --cka_scales"]),
        "visualize_load_size": ("visualize", ["--image_path", img, "--output_dir", str(tmp_path / "out"),
                                              "--lift_path", "none", "--load_size", "100000"] + backbone, 2,
                                "2x input lower --load_size".split(" ")[2:]),
        "train_imsize": ("train", ["--data_root", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out"),
                                   "--imsize", "99968"] + backbone, 2, ["at 99968x99968", "lower --imsize"]),
        "train_batch": ("train", ["--data_root", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out"),
                                  "--imsize", "256", "--batch_size", "100000"] + backbone, 2,
                        ["100000 x 6 x 257 x 257", "lower --batch_size"]),
    }


SIZE_CASES = ["extract_lift_iter_12", "extract_load_size_100000", "extract_batch_size", "extract_per_image_no_resize",
              "spair_imsize_100000", "spair_lift9", "tokencut_imsize_100002", "tokencut_eigen_per_image",
              "visualize_cka_scales", "visualize_load_size", "train_imsize", "train_batch"]


@pytest.mark.parametrize("case", SIZE_CASES)
def test_sizes_refused_before_allocating(case, tmp_path, capsys, monkeypatch):
    command, argv, code, words = _size_cases(tmp_path)[case]
    before = _peak_rss_mb()
    rc = _cmd(command)(argv)
    err = capsys.readouterr().err
    lines = _errors(err)
    assert "Traceback" not in err and rc == code, err
    text = " ".join(lines)
    assert len(lines) == (1 if code == 2 else 2) and "over --max_memory_gb" in text, err
    assert all(w in text for w in words), (words, text)
    assert _peak_rss_mb() - before < 1024  # nothing large was allocated
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.pt"))


def test_memory_prediction_values():
    from liftkit.memory import GB, check_budget, eigen_tensors, plan_tensors
    from liftkit.methods import Method

    plan = [Method.parse("low"), Method.parse("lift2")]
    t = {p.what.split(" (")[0]: p.nbytes for p in plan_tensors(384, 6, 14, 224, 336, plan, batch=2)}
    assert t["attention"] == 2 * 6 * 385 * 385 * 4 and t["backbone tokens"] == 2 * 385 * 1536 * 4
    assert t["LiFT output after iteration 2"] == 2 * 384 * 64 * 96 * 4
    assert t["LiFT image branch at iteration 2"] == 2 * 32 * 448 * 672 * 4
    (e,) = eigen_tensors(16, 24, [Method.parse("lift")])
    assert e.shape == (32 * 48, 32 * 48) and e.nbytes == (32 * 48) ** 2 * 8
    check_budget([e], 1, {})  # 18.9 MB fits in 1 GB
    with pytest.raises(Exception, match=r"= 1536 x 1536 x 8 B = 18.0 MB, over --max_memory_gb 0.01; lower X"):
        check_budget([e], 0.01, {"methods": "X"})
    assert GB == 1 << 30


# ---------------------------------------------------------------- class 3 in the commands: --skip_bad everywhere

def _coco_set(root, bad_record):
    import json

    (root / "imgs").mkdir(parents=True)
    for i in (1, 2):
        Image.new("RGB", (64, 48), (40 * i, 90, 20)).save(root / "imgs" / f"{i:012d}.jpg")
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 64, "height": 48} for i in (1, 2)]
    anns = [{"id": 10, "image_id": 1, "bbox": [5, 6, 40, 30], "category_id": 1, "iscrowd": 0}, bad_record]
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return root


@pytest.mark.parametrize("bad", [7, {"id": 11, "image_id": "2", "bbox": [1, 1, 5, 5]},
                                 {"id": 11, "image_id": 2, "bbox": [float("nan"), 1, 5, 5]},
                                 {"id": 11, "image_id": 2, "bbox": [1, 1, -5, 5]}])
def test_tokencut_coco_bad_record_stops_or_is_skipped(bad, tmp_path, capsys):
    import json

    import eval_tokencut

    root = _coco_set(tmp_path / "coco", bad)
    argv = ["--dataset", "coco", "--tau", "0.2", "--data_root", str(root / "imgs"), "--annotations", str(root / "instances.json"),
            "--methods", "low", "--lift_path", "none", "--facet", "value", "--load_size", "32",
            "--model_type", "dino_vits16", "--random_init", "--quiet", "--device", "cpu"]
    rc = eval_tokencut.main(argv)
    err = capsys.readouterr().err
    lines = _errors(err)
    assert rc == 2 and len(lines) == 1 and "instances.json" in lines[0] and "Traceback" not in err, err
    out = tmp_path / "r.json"
    rc = eval_tokencut.main(argv + ["--skip_bad", "--output_json", str(out)])
    err = capsys.readouterr().err
    lines = _errors(err)  # the skipped record, and on a tiny random backbone maybe a TokenCut failure too
    assert rc == 1 and "skipped" in lines[0] and "Traceback" not in err, err
    # the bad record; with it gone image 2 may have no box left: skipped too, naming the same file
    assert 1 <= sum("instances.json" in line for line in lines[1:]) <= 2
    r = json.loads(out.read_text())["dataset"]
    assert r["num_images"] == 1 and r["num_skipped"] == len(r["skipped"]) in (1, 2)
    assert set(r["skipped"][0]) == {"item", "reason"} and "instances.json" in r["skipped"][0]["reason"]
