"""--tau auto: the table (the paper's values for DINO v1, measured values for the offline backbone), the parsing
of --tau, and the density rule on hand-made cosine histograms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from liftkit.errors import ConfigError
from liftkit.eval.tokencut_tau import (
    TAU_TABLE, auto_tau, cosine_histogram, densities, parse_tau, tau_for_density,
)


def test_auto_tau_reads_the_table():
    assert auto_tau("dino_vits16", "key", 11, 12, "voc07") == (0.2, TAU_TABLE[("dino_vits16", "key")].source)
    assert auto_tau("dino_vitb8", "key", 11, 12, "coco20k")[0] == 0.3
    assert auto_tau("dino_vits8", "key", 11, 12, "folder")[0] == 0.2
    entry = TAU_TABLE[("dinov2_vits14_imgfocus", "key")]
    assert "measured" in entry.source and entry.voc == entry.coco
    for ds in ("voc07", "voc12", "coco", "coco20k", "folder"):
        assert auto_tau("dinov2_vits14_imgfocus", "key", 11, 12, ds)[0] == entry.voc
    with pytest.raises(ConfigError, match="no tau is recorded for the dino_vits16 key facet at layer 5"):
        auto_tau("dino_vits16", "key", 5, 12, "voc07")
    with pytest.raises(ConfigError, match="bench/calibrate_tau.py --model_type dino_vits16 --facets value"):
        auto_tau("dino_vits16", "value", 11, 12, "voc07")


def test_parse_tau():
    assert parse_tau("auto") is None and parse_tau("AUTO") is None and parse_tau("0.25") == 0.25
    with pytest.raises(ConfigError, match="must be in"):
        parse_tau("1.5")


def test_density_rule_on_hand_made_histograms():
    bins = 4000
    # image A: all pair cosines at 0.1; image B: half at 0.5, half at 0.9
    a = np.zeros(bins, np.int64)
    a[int((0.1 + 1) / 2 * bins)] = 100
    b = np.zeros(bins, np.int64)
    b[int((0.5 + 1) / 2 * bins)] = 50
    b[int((0.9 + 1) / 2 * bins)] = 50
    np.testing.assert_allclose(densities([a, b], [0.0, 0.3, 0.7, 0.95]), [[1, 0, 0, 0], [1, 1, 0.5, 0]])
    # mean density: 1 below 0.1, 0.5 in (0.1, 0.5), 0.25 in (0.5, 0.9): target 0.5 -> the first tau reaching it
    assert 0.1 <= tau_for_density([a, b], 0.5) < 0.5
    assert 0.5 <= tau_for_density([a, b], 0.25) < 0.9


def test_cosine_histogram_counts_every_ordered_pair():
    f = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).reshape(2, 1, 3)  # cells e1, e2, e1
    h = cosine_histogram(f, bins=4)  # bins [-1,-.5) [-.5,0) [0,.5) [.5,1]
    assert h.tolist() == [0, 0, 4, 2]  # 4 ordered pairs at cosine 0, 2 at cosine 1
