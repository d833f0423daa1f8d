"""CKA, similarity maps, PCA pictures and eval_visualize_feats end to end on assets/."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import eval_visualize_feats
from liftkit.eval.cka import feature_map_samples, linear_cka
from liftkit.lift.checkpoint import LiftMeta, save_lift
from liftkit.lift.model import LiFT
from liftkit.vis.pca import fit_pca, pca_pictures
from liftkit.vis.similarity import point_to_cell, similarity_map
from tests.conftest import ASSETS


def test_cka_identity_rotation_scaling():
    torch.manual_seed(0)
    x = torch.randn(500, 16)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q, _ = torch.linalg.qr(torch.randn(16, 16))
    assert linear_cka(x, 3.7 * x @ q) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, x + 5.0) == pytest.approx(1.0, abs=1e-9)  # centring removes offsets
    y = torch.randn(500, 16)
    assert linear_cka(x, y) < 0.1  # independent noise: near 0
    # a hand-made case: x = [a, b], y = [a] with a, b orthogonal unit-variance columns -> CKA = 1/sqrt(2)
    a = torch.tensor([1.0, -1.0, 1.0, -1.0])
    b = torch.tensor([1.0, 1.0, -1.0, -1.0])
    assert linear_cka(torch.stack([a, b], 1), a[:, None]) == pytest.approx(1 / 2 ** 0.5, abs=1e-12)
    with pytest.raises(ValueError):
        linear_cka(x, x[:10])


def test_feature_map_samples_layout():
    maps = torch.arange(2 * 3 * 2 * 2).float().reshape(2, 3, 2, 2)
    s = feature_map_samples(maps)
    assert s.shape == (8, 3) and torch.equal(s[5], maps[1, :, 0, 1])


def test_similarity_of_point_with_itself_is_max():
    torch.manual_seed(0)
    f = torch.randn(8, 5, 7)
    cell = point_to_cell((30.0, 10.0), (50, 70), (5, 7))
    assert cell == (1, 3)
    sim = similarity_map(f, cell)
    assert sim[cell] == pytest.approx(1.0, abs=1e-6)
    assert sim.argmax().item() == cell[0] * 7 + cell[1]
    assert sim.min() >= -1 - 1e-6


def test_pca_shared_basis_is_deterministic_and_comparable():
    torch.manual_seed(0)
    a = torch.randn(16, 4, 4)
    pics = pca_pictures([a, a.repeat_interleave(2, 1).repeat_interleave(2, 2)])
    assert pics[0].shape == (4, 4, 3) and pics[1].shape == (8, 8, 3)
    # same features -> same colours in the nearest-upsampled map
    assert abs(pics[1][::2, ::2] - pics[0]).max() < 1e-5
    m1 = fit_pca([a])[1]
    m2 = fit_pca([a])[1]
    assert torch.equal(m1, m2)


def test_end_to_end_on_assets(tmp_path, imgfocus):
    torch.manual_seed(0)
    meta = LiftMeta("dinov2_vits14_imgfocus", imgfocus.info.weights_sha256, 11, "key", "dim_major", 14, 384,
                    imgfocus.spec.mean, imgfocus.spec.std)
    lift = save_lift(tmp_path / "lift.safetensors", LiFT(384, 14).eval(), meta)
    out = tmp_path / "vis"
    rc = eval_visualize_feats.main(["--image_path", str(ASSETS / "sample.jpg"), str(ASSETS / "coffee.jpg"),
                                    "--output_dir", str(out), "--lift_path", str(lift), "--lift_iter", "2",
                                    "--cka_scales", "56,112", "--load_size", "112", "--points", "100,100", "300,200"])
    assert rc == 0
    sim = Image.open(out / "sample_sim.png")
    pca = Image.open(out / "sample_pca.png")
    # 6 columns (image + backbone, bilinear, 2x input, LiFT, LiFT x2), 2 rows (points) at 90 dpi
    assert sim.size == (round(2.6 * 6 * 90), round((2.6 * 300 / 451 * 2 + 0.5) * 90))
    assert pca.size[0] == 6 * 320  # image + 5 maps, 3.2 in at 100 dpi
    cka = json.loads((out / "cka.json").read_text())
    assert cka["images"] == 2 and set(cka["cka"]) == {"backbone", "bilinear", "lift"}
    assert cka["run"]["command"] == "eval_visualize_feats" and cka["run"]["args"]["lift_iter"] == 2
    for m in ("backbone", "bilinear", "lift"):
        assert cka["cka"][m]["112"]["112"] == pytest.approx(1.0, abs=1e-9)  # same scale: the backbone itself
        assert 0 < cka["cka"][m]["56"]["112"] < 1
    assert (out / "cka.png").is_file()


def test_bad_point_is_one_line(tmp_path, capsys):
    rc = eval_visualize_feats.main(["--image_path", str(ASSETS / "sample.jpg"), "--output_dir", str(tmp_path),
                                    "--model_type", "dino_vits16", "--random_init", "--lift_path", "none_such",
                                    "--no_cka"])
    assert rc == 2 and "--lift_path 'none_such' does not exist" in capsys.readouterr().err
    rc = eval_visualize_feats.main(["--image_path", str(ASSETS / "sample.jpg"), "--output_dir", str(tmp_path),
                                    "--model_type", "dino_vits16", "--random_init", "--no_cka", "--points", "999,5"])
    assert rc == 1 and "--points 999,5 lies outside the 451x300 image" in capsys.readouterr().err


def test_lift_path_none_shows_the_baselines(tmp_path, capsys):
    rc = eval_visualize_feats.main(["--image_path", str(ASSETS / "sample.jpg"), "--output_dir", str(tmp_path),
                                    "--model_type", "dino_vits16", "--random_init", "--lift_path", "none",
                                    "--no_cka", "--load_size", "64", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert "no LiFT for dino_vits16: showing the baselines only" in capsys.readouterr().err
    # 4 columns: image, backbone, bilinear, 2x input; one row (the centre point)
    assert Image.open(tmp_path / "sample_sim.png").size == (round(2.6 * 4 * 90), int((2.6 * 300 / 451 + 0.5) * 90))
