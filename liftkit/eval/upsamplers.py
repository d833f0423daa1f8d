"""The rows of the upsampler benchmark: named ways to get dense features from one image, computed in one place.

A :class:`Method` is a row: ``low`` (the backbone grid), ``bilinear`` / ``nearest`` (that grid upsampled 2^k x),
``highres`` (the backbone on the image resized 2^k x, bilinear), or a LiFT applied k times — the extractor's own
LiFT (``lift``, ``lift2``) or any labelled LiFT file (each held by its own extractor view that shares the backbone).

:func:`method_features` is the *one* function that computes features for every row (so it can be swapped for a
one-pass ``ViTExtractor.features`` later); it runs the backbone once for all rows that start from its grid, and
gives the same tensors as ``ViTExtractor.dense_features(x, name)`` for the built-in names.

The extractor is duck-typed: anything with ``extract_descriptors(x)`` and ``lift_features(feats, x, k)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from liftkit.errors import ConfigError

KINDS = ("low", "bilinear", "nearest", "highres", "lift")


@dataclass(frozen=True)
class Method:
    """One row of the benchmark.

    Attributes:
        label: the row's name (``bilinear``, ``lift2``, ``recipeA``...).
        kind: one of :data:`KINDS`.
        k: iterations / the exponent of the scale (``low``: 0).
        lifter: for ``lift`` rows, the extractor whose LiFT is applied (None: the main extractor's).
        source: the LiFT file of a labelled row ('' otherwise).
    """

    label: str
    kind: str
    k: int = 1
    lifter: Any = None
    source: str = ""

    @property
    def scale(self) -> int:
        """How much denser than the backbone grid the output is (1 for ``low``, 2^k otherwise)."""
        return 1 if self.kind == "low" else 2 ** self.k


def parse_builtin(name: str) -> Method:
    """``"lift2"`` -> Method("lift2", "lift", 2); ``"low"`` -> Method("low", "low", 0). Unknown: ConfigError."""
    m = re.fullmatch(r"(low|bilinear|nearest|highres|lift)(\d*)", name)
    if not m or (m.group(1) == "low" and m.group(2)) or (m.group(2) and int(m.group(2)) < 1):
        raise ConfigError(f"--methods: unknown method '{name}'; choose from low, bilinear, nearest, highres, lift, "
                          "liftK (K iterations), bilinearK, highresK")
    kind = m.group(1)
    return Method(name, kind, 0 if kind == "low" else int(m.group(2) or 1))


def parse_lift_paths(text: str) -> List[tuple]:
    """``"a=x.safetensors,b=y.pth"`` -> [("a", "x.safetensors"), ("b", "y.pth")] (labels unique, non-empty)."""
    out = []
    for item in (t.strip() for t in (text or "").split(",")):
        if not item:
            continue
        label, sep, path = item.partition("=")
        label, path = label.strip(), path.strip()
        if not sep or not label or not path:
            raise ConfigError(f"--lift_paths entry '{item}' is not label=path; e.g. --lift_paths attend=runs/a.safetensors")
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", label):
            raise ConfigError(f"--lift_paths label '{label}': use letters, digits and _ . + - only")
        out.append((label, path))
    labels = [a for a, _ in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--lift_paths: label '{next(a for a in labels if labels.count(a) > 1)}' is used twice")
    return out


def check_unique(methods: Sequence[Method]) -> None:
    """Every row label once (ConfigError naming the clash)."""
    seen = set()
    for m in methods:
        if m.label in seen:
            raise ConfigError(f"row '{m.label}' is listed twice (--methods / --lift_paths labels must be unique)")
        seen.add(m.label)


@torch.no_grad()
def method_features(ext, x: torch.Tensor, methods: Sequence[Method],
                    low: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """Features of one image batch for every row.

    Args:
        ext: the main extractor (backbone; its LiFT for rows without ``lifter``).
        x: (B, 3, H, W) normalised image.
        methods: the rows.
        low: the backbone's (B, C, h, w) features of ``x`` if already computed.
    Returns:
        label -> (B, C, s h, s w) float32 with s = ``Method.scale``.
    """
    out: Dict[str, torch.Tensor] = {}
    if low is None and any(m.kind != "highres" for m in methods):
        low = ext.extract_descriptors(x)
    for m in methods:
        if m.kind == "low":
            out[m.label] = low
        elif m.kind == "highres":
            big = F.interpolate(x, scale_factor=m.scale, mode="bilinear", align_corners=False)
            out[m.label] = ext.extract_descriptors(big)
        elif m.kind == "lift":
            out[m.label] = (m.lifter or ext).lift_features(low, x, m.k)
        else:
            size = (low.shape[-2] * m.scale, low.shape[-1] * m.scale)
            opts = {"align_corners": False} if m.kind == "bilinear" else {}
            out[m.label] = F.interpolate(low, size=size, mode=m.kind, **opts)
    return out
