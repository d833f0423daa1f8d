"""Issue #13/#17: the official commands run unchanged on our scripts; the jbu method, --lift_path random, the
input-size sweep and the paper's FLOP figures in eval_spair, end to end on a random DINO ViT-S/16."""

from __future__ import annotations

import importlib
import json
import re
import shlex

import pytest
import torch

import eval_spair
import lift_extractor
from liftkit.io.feature_files import load_features
from liftkit.lift.jbu import jbu
from tests.conftest import ASSETS, ROOT, require_shared_data

OFFICIAL = ROOT.parent / "shared" / "reference" / "lift-official"
SCRIPTS = {"lift_extractor.py": "extract", "train_lift.py": "train", "eval_spair.py": "eval_spair",
           "eval_davis.py": "eval_davis", "eval_obj_disc.py": "eval_tokencut", "eval_visualize_feats.py": "visualize"}
# what --imsize means in each official script, as (load_size, resize_mode) of ours
IMSIZE = {"eval_spair": "pad", "eval_davis": "square", "eval_tokencut": "square", "visualize": "square",
          "train": "crop"}
SAMPLE = str(ASSETS / "sample.jpg")
RANDOM_S16 = ["--model_type", "dino_vits16", "--random_init", "--quiet", "--device", "cpu"]

pytestmark = pytest.mark.usefixtures("one_thread")


def official_commands():
    """Every `python <script> ...` line of the official scripts' headers and README (paths substituted)."""
    out = []
    for f in [OFFICIAL / "README.md"] + [OFFICIAL / s for s in SCRIPTS]:
        for line in f.read_text().splitlines():
            m = re.match(r"\s*python (\w+\.py) (.*)$", line)
            if m and m.group(1) in SCRIPTS:
                out.append((m.group(1), m.group(2).replace("/YOUR/PATH/TO/", "/data/")))
    return out


def test_every_official_command_parses_with_the_official_meaning():
    cmds = official_commands()
    assert len(cmds) >= 20 and {c for c, _ in cmds} == set(SCRIPTS)
    for script, rest in cmds:
        parser = importlib.import_module(f"liftkit.cli.{SCRIPTS[script]}").build_parser()
        argv = shlex.split(rest)
        args = parser.parse_args(argv)
        want_model = argv[argv.index("--model_type" if "--model_type" in argv else "--model") + 1]
        assert args.model_type == want_model, (script, rest)
        if "--imsize" in argv:
            size = int(argv[argv.index("--imsize") + 1])
            assert (args.load_size, args.resize_mode) == (size, IMSIZE[SCRIPTS[script]]), (script, rest)
        if script == "eval_obj_disc.py":
            assert args.dataset in ("voc07", "voc12", "coco20k") and args.set in ("trainval", "train")
        if script == "lift_extractor.py":
            assert args.output_path == "sample.pth" and args.lift_path.startswith("pretrained/lift_")


def test_official_tokencut_flags_and_help_show_both_spellings():
    from liftkit.cli import eval_tokencut

    p = eval_tokencut.build_parser()
    a = p.parse_args(["--dataroot", "/d", "--dataset", "VOC07", "--set", "trainval", "--no_hard", "--no-binary-graph",
                      "--k_patches", "50", "--which_features", "q", "--imsize", "224", "--tau", "0.2"])
    assert (a.dataset, a.no_binary_graph, a.no_hard, a.k_patches, a.which_features) == ("voc07", True, True, 50, "q")
    text = p.format_help()
    for flag in ("--data_root", "--dataroot", "--no-binary-graph", "--imsize", "--load_size", "--jbu_sigma_range"):
        assert flag in text


def test_tokencut_weighted_graph_is_the_official_no_binary_graph():
    import numpy as np
    import scipy.linalg

    from liftkit.eval.tokencut import flatten_normalized, tokencut

    torch.manual_seed(0)
    f = torch.randn(8, 5, 6)
    res = tokencut(f, (50, 60), tau=0.1, weighted=True)
    flat = flatten_normalized(f)
    a = (flat @ flat.t()).numpy()
    a[a < 0.1] = 1e-5  # the official ncut(no_binary_graph=True)
    d = np.diag(a.sum(1))
    _, vec = scipy.linalg.eigh(d - a, d, subset_by_index=[1, 2])
    v = vec[:, 0] * np.sign(vec[:, 0][np.argmax(np.abs(vec[:, 0]))])
    np.testing.assert_allclose(res.eigenvector.ravel(), v, rtol=1e-4, atol=1e-6)


def test_jbu_method_end_to_end_and_random_lift_seeded(tmp_path):
    out = tmp_path / "jbu.pt"
    rc = lift_extractor.main(["--image_path", SAMPLE, "--output_path", str(out), "--upsample", "jbu",
                              "--jbu_sigma_spatial", "0.8", "--jbu_sigma_range", "0.2", "--load_size", "64"]
                             + RANDOM_S16)
    assert rc == 0
    feats, meta = load_features(out)
    assert feats.shape == (384, 8, 12) and meta["method"] == "jbu"
    from extractor import ViTExtractor

    ext = ViTExtractor("dino_vits16", random_init=True, lift_path="random", lift_seed=5)
    x, _ = ext.load_image(SAMPLE, 64)
    mean, std = torch.tensor(ext.spec.mean).view(1, 3, 1, 1), torch.tensor(ext.spec.std).view(1, 3, 1, 1)
    want = jbu(ext.extract_descriptors(x), (x * std + mean).clamp(0, 1), (8, 12), 0.8, 0.2)[0]
    torch.testing.assert_close(feats, want)
    assert ext.features(x, "low,jbu2")["jbu2"].shape == (1, 384, 16, 24)
    # --lift_path random: seeded (same seed, same weights; another seed, others), accepted by every command
    again = ViTExtractor("dino_vits16", random_init=True, lift_path="random", lift_seed=5)
    other = ViTExtractor("dino_vits16", random_init=True, lift_path="random", lift_seed=6)
    a, b, c = (e.lift.outc.weight for e in (ext, again, other))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    for mod in ("extract", "eval_spair", "eval_davis", "eval_tokencut", "visualize"):
        p = importlib.import_module(f"liftkit.cli.{mod}").build_parser()
        args = p.parse_args(["--data_root", "/d", "--lift_path", "random", "--seed", "7"]
                            + (["--dataset", "voc07"] if mod == "eval_tokencut" else []))
        assert (args.lift_path, args.seed) == ("random", 7), mod


def _two_pair_spair(tmp_path):
    """The real SPair subset cut to its first 2 test pairs (symlinked images and annotations)."""
    real = require_shared_data() / "SPair-71k"
    root = tmp_path / "SPair-71k"
    (root / "Layout" / "large").mkdir(parents=True)
    for sub in ("JPEGImages", "PairAnnotation", "ImageAnnotation"):
        if (real / sub).exists():
            (root / sub).symlink_to(real / sub)
    lines = (real / "Layout" / "large" / "test.txt").read_text().splitlines()[:2]
    (root / "Layout" / "large" / "test.txt").write_text("\n".join(lines) + "\n")
    return str(root)


@pytest.mark.real_data
def test_spair_paper_flops_jbu_random_lift_and_sweep(tmp_path, capsys):
    spair = _two_pair_spair(tmp_path)
    rc = eval_spair.main(["--dataroot", spair, "--pairs_per_category", "1", "--imsize", "224", "--lift_path",
                          "random", "--seed", "1", "--methods", "low,bilinear,jbu,lift,highres", "--flops", "both",
                          "--output_json", str(tmp_path / "s.json")] + RANDOM_S16)
    assert rc == 0
    table = capsys.readouterr().out
    res = json.loads((tmp_path / "s.json").read_text())["methods"]
    paper = {m: round(r["paper_gflops_per_image"], 2) for m, r in res.items()}
    assert paper == {"low": 4.34, "bilinear": 4.34, "jbu": 4.34, "lift": 5.30, "highres": 17.28}
    assert "paper G" in table and "GFLOPs" in table and " 17.28 " in table and " 5.30 " in table
    assert res["lift"]["gflops_per_image"] > res["low"]["gflops_per_image"] > 8.0  # true FLOPs: 2 per MAC + attn
    # a sweep: one row per size, the figures of the single-size runs
    rc = eval_spair.main(["--dataroot", spair, "--pairs_per_category", "1", "--sweep_sizes", "32,64", "--methods",
                          "low,jbu", "--output_json", str(tmp_path / "sweep.json")] + RANDOM_S16)
    assert rc == 0
    out = capsys.readouterr().out
    rows = [ln.split() for ln in out.split("input-size sweep")[1].splitlines()[2:] if ln.strip()]
    assert [r[0] for r in rows] == ["32", "64"] and all(len(r) == 3 for r in rows)
    sweep = json.loads((tmp_path / "sweep.json").read_text())["sweep"]
    one = json.loads((tmp_path / "sweep_64.json").read_text())["methods"]
    assert sweep["64"]["jbu"] == one["jbu"]["pck"]["mean_over_categories"]["pck@0.1"]
    assert float(rows[1][2]) == pytest.approx(100 * sweep["64"]["jbu"], abs=0.006)
