"""lift_extractor at data-set scale: DataLoader workers, torchrun sharding (2 gloo processes), the manifest,
resuming a killed run, --save_dtype and the sharded store. Tiny random timm ViT, small inputs, real JPEGs."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

import lift_extractor
from liftkit.io.feature_files import load_features
from liftkit.io.feature_store import FeatureStore
from tests.conftest import ROOT, SHARED_DATA, require_shared_data, run_script

SAMPLES = SHARED_DATA / "imagenet-sample-images"
MODEL = ["--model_type", "timm:vit_tiny_patch16_224", "--random_init", "--no_lift", "--device", "cpu", "--quiet"]


def _folder(tmp_path: Path, n: int, start: int = 300, bad: bool = False) -> Path:
    require_shared_data(SAMPLES)
    data = tmp_path / "imgs"
    (data / "sub").mkdir(parents=True)
    for i, name in enumerate(sorted(p.name for p in SAMPLES.iterdir())[start:start + n]):
        (data / ("sub" if i % 3 == 0 else "") / name).symlink_to(SAMPLES / name)
    if bad:
        (data / "zz_bad.jpg").write_bytes(b"not a jpeg")  # last in the sorted list: rank 1's shard of 2 when n is odd
    return data


def _cli(args, nproc: int, timeout: float = 240, **popen):
    return run_script("lift_extractor.py", args, nproc, timeout, **popen)


def _children(pid: int):
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _manifest(folder: Path):
    return [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]


def _files(folder: Path, ext: str = "safetensors"):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob(f"*.{ext}"))}


def test_two_processes_write_the_files_of_one(tmp_path, one_thread):
    data = _folder(tmp_path, 7, bad=True)
    out = tmp_path / "out"  # both runs write to the same path (the path is part of the recorded arguments)
    # npy: array + sorted JSON, reproducible bytes (safetensors' header order varies between processes, pt's zip
    # records name the temp file: two one-process runs differ there too)
    args = ["--image_path", str(data), "--output_dir", str(out), "--format", "npy", "--load_size", "48",
            "--num_workers", "1"] + MODEL
    assert lift_extractor.main(args) == 1  # in this process (one thread, as each torchrun process below)
    out.rename(tmp_path / "one")
    two = _cli(args, 2)
    assert two.returncode == 1, two.stderr[-3000:]
    # the bad file sits in rank 1's shard; rank 0 reports it once, in the gathered summary
    assert two.stderr.count("zz_bad.jpg' is not an image file") == 1
    assert "error: 1 of 8 image(s) failed" in two.stderr and two.stderr.count("[lift_extractor] done: 7 "
                                                                              "extracted") == 1
    assert "failed -> %s (manifest %s) over 2 processes" % (out, out / "manifest.jsonl") in two.stderr
    files1, files2 = _files(tmp_path / "one", "npy*"), _files(out, "npy*")
    assert len(files1) == 14 and files1.keys() == files2.keys()  # arrays and their .npy.json
    assert all(files1[k] == files2[k] for k in files1)  # byte for byte
    feats, meta = load_features(out / "sub" / sorted(p.name for p in (out / "sub").iterdir())[0])
    assert feats.dtype == torch.float32 and feats.shape[0] == 192 and meta["save_dtype"] == "float32"
    m1, m2 = _manifest(tmp_path / "one"), _manifest(out)
    assert [r["file"] for r in m2] == [r["file"] for r in m1] and len({r["file"] for r in m2}) == 8
    for a, b in zip(m1, m2):
        assert (a["status"], a["grid"], a["error"]) == (b["status"], b["grid"], b["error"])
        assert b["output"] == (None if b["status"] == "failed" else a["output"].replace(str(tmp_path / "one"),
                                                                                         str(out)))
    assert [r["status"] for r in m2].count("ok") == 7 and m2[-1]["status"] == "failed"
    assert all(r["grid"] for r in m2[:-1]) and m2[-1]["grid"] is None


def test_workers_and_batches_write_the_bytes_of_the_main_thread(tmp_path, one_thread):
    data = _folder(tmp_path, 5, start=100)
    out = tmp_path / "out"
    args = ["--image_path", str(data), "--output_dir", str(out), "--format", "npy", "--load_size", "32",
            "--resize_mode", "square", "--batch_size", "2"] + MODEL
    assert lift_extractor.main(args + ["--num_workers", "0"]) == 0
    out.rename(tmp_path / "main_thread")
    assert lift_extractor.main(args + ["--num_workers", "2"]) == 0
    a, b = _files(tmp_path / "main_thread", "npy"), _files(out, "npy")
    assert len(a) == 5 and a == b
    # the recorded arguments differ only by --num_workers; the rest of the metadata is identical
    first = sorted(b)[0] + ".json"
    ma, mb = (json.loads((d / first).read_text()) for d in (tmp_path / "main_thread", out))
    ra, rb = json.loads(ma.pop("run_args")), json.loads(mb.pop("run_args"))
    assert ma == mb and (ra.pop("num_workers"), rb.pop("num_workers")) == (0, 2) and ra == rb
    assert [r["status"] for r in _manifest(out)] == ["ok"] * 5


def test_a_killed_sharded_run_resumes_with_the_rest_only(tmp_path):
    data = _folder(tmp_path, 16, start=400)
    out = tmp_path / "out"
    args = ["--image_path", str(data), "--output_dir", str(out), "--format", "pt", "--load_size", "128",
            "--num_workers", "0"] + MODEL
    proc = _cli(args, 2, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.rglob("*.pt"))) < 3 and proc.poll() is None:
        time.sleep(0.05)
    workers = _children(proc.pid)  # torchrun starts its workers in their own sessions: kill them by id
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    time.sleep(0.5)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    assert 3 <= len(before) < 16, "the run should be stopped part way"
    assert not (out / "manifest.jsonl").exists()
    r = _cli(args, 2)
    assert r.returncode == 0, r.stderr[-3000:]
    after = list(out.rglob("*.pt"))
    assert len(after) == 16 and all(p.stat().st_mtime_ns == t for p, t in before.items())  # not redone
    m = _manifest(out)
    assert len(m) == 16 and len({r["file"] for r in m}) == 16
    assert sorted(r["output"] for r in m if r["status"] == "skipped") == sorted(str(p) for p in before)
    assert sum(r["status"] == "ok" for r in m) == 16 - len(before)
    for p in after:
        feats, meta = load_features(p)
        assert feats.shape[0] == 192 and meta["grid"] == "%dx%d" % tuple(feats.shape[1:])


def test_float16_sharded_store_reads_back_every_image(tmp_path, one_thread):
    data = _folder(tmp_path, 7, start=500)
    files, store_dir = tmp_path / "files", tmp_path / "store"
    base = ["--image_path", str(data), "--load_size", "32", "--num_workers", "0"] + MODEL
    assert lift_extractor.main(base + ["--output_dir", str(files), "--format", "safetensors"]) == 0
    # first 4 images, then all: the second run adds the other 3 in a new shard and skips the rest
    assert lift_extractor.main(base + ["--output_dir", str(store_dir), "--shard_size", "3", "--save_dtype",
                                       "float16", "--limit", "4"]) == 0
    assert lift_extractor.main(base + ["--output_dir", str(store_dir), "--shard_size", "3", "--save_dtype",
                                       "float16"]) == 0
    shards = sorted(p.name for p in store_dir.glob("shard-*.safetensors"))
    assert shards == ["shard-r00000-00000.safetensors", "shard-r00000-00001.safetensors",
                      "shard-r00000-00002.safetensors"]
    m = _manifest(store_dir)
    assert [r["status"] for r in m] == ["skipped"] * 4 + ["ok"] * 3
    assert m[-1]["output"] == str(store_dir / shards[-1])
    store = FeatureStore(store_dir)
    ref = {p.relative_to(files).with_suffix("").as_posix(): p for p in files.rglob("*.safetensors")}
    assert len(store) == 7 and sorted(store.keys()) == sorted(ref)
    for key, path in ref.items():
        f32, meta32 = load_features(path)
        f16, meta16 = store.load(key)
        assert f16.dtype == torch.float16 and f16.shape == f32.shape
        # round to nearest: relative error at most 2^-11 (fp16's 10-bit mantissa), normal range here
        assert ((f16.float() - f32).abs() <= f32.abs() * 2.0 ** -11 + 1e-7).all()
        assert meta16["save_dtype"] == "float16" and meta32["save_dtype"] == "float32"
        for k in ("image", "image_size", "input_size", "grid_low", "grid", "backbone", "method", "channels"):
            assert meta16[k] == meta32[k], k
    # 3 files' metadata and fp32 tensors vs one shard of 3 fp16 tensors with the shared metadata once
    three = sorted(ref)[:3]
    assert (store_dir / shards[0]).stat().st_size < 0.6 * sum(ref[k].stat().st_size for k in three)


def test_flag_checks(tmp_path, capsys):
    base = ["--image_path", str(ROOT / "assets" / "sample.jpg"), "--output_dir", str(tmp_path)] + MODEL
    assert lift_extractor.main(base + ["--save_dtype", "bfloat16", "--format", "npy"]) == 2
    assert "--save_dtype bfloat16 cannot be written as --format npy" in capsys.readouterr().err
    assert lift_extractor.main(base + ["--num_workers", "-1"]) == 2
    assert lift_extractor.main(base + ["--output_path", str(tmp_path / "a.pt"), "--shard_size", "2"]) == 2
    assert "--shard_size writes a store" in capsys.readouterr().err


def _drop_times(obj):
    if isinstance(obj, dict):
        return {k: _drop_times(v) for k, v in obj.items() if not k.endswith("_s")}
    if isinstance(obj, list):
        return [_drop_times(v) for v in obj]
    return obj


def test_sharded_eval_tokencut_gives_the_one_process_json(tmp_path, one_thread):
    import eval_tokencut

    data = _folder(tmp_path, 4, start=50, bad=True)
    out = tmp_path / "tc.json"
    args = ["--dataset", "folder", "--dataroot", str(data), "--methods", "low,bilinear", "--load_size", "64",
            "--facet", "value", "--tau", "0.9", "--output_json", str(out), "--lift_path", "none"] + [a for a in MODEL if a != "--no_lift"]
    assert eval_tokencut.main(args) == 1  # the broken file fails
    one = json.loads(out.read_text())
    out.unlink()
    r = run_script("eval_tokencut.py", args, nproc=2)
    n_fail = len(one["failures"])
    assert r.returncode == 1 and r.stderr.count(f"error: {n_fail} failure(s)") == 1, r.stderr[-3000:]
    two = json.loads(out.read_text())
    assert len(one["images"]) == 4 and [im["name"] for im in two["images"]] == [im["name"] for im in one["images"]]
    assert one["failures"][-1]["item"] == "zz_bad" and any(im["results"]["low"]["box"] for im in one["images"])
    assert _drop_times(two) == _drop_times(one)  # boxes, IoUs, summary, failures: all but the timings


def test_sharded_eval_spair_gives_the_one_process_json(tmp_path, one_thread):
    import eval_spair

    spair = require_shared_data(SHARED_DATA / "SPair-71k")
    names = (spair / "Layout" / "large" / "test.txt").read_text().split()
    names = [n for n in names if n.endswith(":aeroplane")][:3] + [n for n in names if n.endswith(":cow")][:3]
    root = tmp_path / "SPair-71k"  # a few test pairs, two categories
    (root / "Layout" / "large").mkdir(parents=True)
    (root / "Layout" / "large" / "test.txt").write_text("\n".join(names) + "\n")
    (root / "PairAnnotation" / "test").mkdir(parents=True)
    for n in names:
        (root / "PairAnnotation" / "test" / f"{n}.json").symlink_to(spair / "PairAnnotation" / "test" / f"{n}.json")
    (root / "JPEGImages").symlink_to(spair / "JPEGImages", target_is_directory=True)
    out = tmp_path / "spair.json"
    args = ["--data_path", str(root), "--quiet", "--methods", "low,bilinear", "--lift_path", "none",
            "--load_size", "64", "--output_json", str(out)] + \
        [a for a in MODEL if a not in ("--no_lift", "--quiet")]
    assert eval_spair.main(args) == 0
    one = json.loads(out.read_text())
    out.unlink()
    r = run_script("eval_spair.py", args, nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads(out.read_text())
    assert one["dataset"]["evaluated_pairs"] >= 3 and len(one["dataset"]["categories"]) == 2
    for res in (one, two):  # timings: sums over ranks, and an image may be computed on both ranks
        for m in res["methods"].values():
            m.pop("seconds_per_image"), m.pop("images_timed")
    assert two == one  # PCK per category and overall, counts, shapes, FLOPs, config


def test_sharded_eval_davis_gives_the_one_process_json(tmp_path, one_thread):
    import eval_davis

    davis = require_shared_data(SHARED_DATA / "DAVIS")
    args = ["--data_path", str(davis), "--sequences", "blackswan,dog", "--methods", "low,bilinear",
            "--max_frames", "3", "--short_side", "64", "--lift_path", "none", "--output_dir", str(tmp_path / "masks"),
            "--output_json", str(tmp_path / "res.json")] + [a for a in MODEL if a != "--no_lift"]
    assert eval_davis.main(args) == 0
    (tmp_path / "res.json").rename(tmp_path / "one.json")
    masks_one = _files(tmp_path / "masks", "png")
    r = run_script("eval_davis.py", args + ["--overwrite"], nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _files(tmp_path / "masks", "png") == masks_one and len(masks_one) == 2 * 2 * 3
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "res.json"))
    assert _drop_times(two["methods"]) == _drop_times(one["methods"]) and two["failures"] == one["failures"] == {}
    assert set(one["methods"]["low"]["per_sequence"]) == {"blackswan", "dog"}
    assert two["args"] == {**one["args"], "overwrite": True}
