"""liftkit.train.feature_cache: keys, resumable chunked builds, unreadable images, gathering rows in batch order."""

from __future__ import annotations

import pytest
import torch

from liftkit.errors import LiftKitError
from liftkit.train.feature_cache import BAD, DONE, TODO, FeatureCache

FIELDS = {"backbone": "vit", "weights_sha256": "abc", "layer": 11, "facet": "key", "channel_order": "dim_major",
          "imsize": 64, "resize": "crop", "downsample": "antialias"}


def _cache(root, n=5, **changes):
    return FeatureCache(root, dict(FIELDS, **changes), "listing-1", n, channels=6, patch_size=16, imsize=64)


def _targets(indices):
    """Row i holds the value i everywhere (exact in float16)."""
    b = len(indices)
    v = torch.tensor(indices, dtype=torch.float32).view(b, 1, 1, 1)
    shapes = {"feat_full": (6, 4, 4), "feat_half": (6, 2, 2), "feat_quarter": (6, 1, 1),
              "img_half": (3, 32, 32), "img_quarter": (3, 16, 16)}
    return {k: v.expand(b, *s).clone() for k, s in shapes.items()}


def test_key_changes_with_every_field_and_the_listing(tmp_path):
    base = _cache(tmp_path)
    for change in ({"layer": 5}, {"facet": "value"}, {"weights_sha256": "abd"}, {"imsize": 128},
                   {"downsample": "strided"}, {"channel_order": "head_major"}, {"resize": "squash"}):
        assert _cache(tmp_path, **change).dir != base.dir, change
    other = FeatureCache(tmp_path, FIELDS, "listing-2", 5, 6, 16, 64)
    assert other.dir != base.dir and _cache(tmp_path).dir == base.dir


def test_interrupted_build_resumes_and_finalize_needs_every_row(tmp_path):
    c = _cache(tmp_path)
    c.create()
    c.open(writable=True)
    assert c.chunks(2) == [[0, 1], [2, 3], [4]]
    assert c.pending_chunks(2, rank=1, world=2) == [[2, 3]]  # rank 1 of 2 builds every other chunk
    c.write([0, 1], _targets([0, 1]))
    with pytest.raises(LiftKitError, match="incomplete"):
        c.finalize()
    assert not c.is_complete()

    again = _cache(tmp_path)  # a new run: the same folder, the done chunk is kept
    again.create()
    again.open(writable=True)
    assert again.status.tolist() == [DONE, DONE, TODO, TODO, TODO]
    assert again.pending_chunks(2) == [[2, 3], [4]]
    again.write([2], _targets([2]), bad=[(3, "'x.jpg' is damaged")])
    again.write([4], _targets([4]))
    manifest = again.finalize()
    assert again.is_complete() and manifest["n_done"] == 4 and manifest["bad"] == {"3": "'x.jpg' is damaged"}

    ro = _cache(tmp_path)
    ro.open()
    assert ro.status.tolist() == [DONE, DONE, DONE, BAD, DONE] and ro.valid().tolist() == [1, 1, 1, 0, 1]
    got = ro.gather([4, 0, 2])  # batch order kept
    assert got["feat_full"].dtype == torch.float32 and got["feat_full"].shape == (3, 6, 4, 4)
    assert got["feat_full"][:, 0, 0, 0].tolist() == [4.0, 0.0, 2.0]
    assert got["img_quarter"][:, 2, 15, 15].tolist() == [4.0, 0.0, 2.0]


def test_features_beyond_float16_are_refused(tmp_path):
    c = _cache(tmp_path, n=1)
    c.create()
    c.open(writable=True)
    t = _targets([0])
    t["feat_full"][0, 0, 0, 0] = 1e6
    with pytest.raises(LiftKitError, match="float16 range"):
        c.write([0], t)
