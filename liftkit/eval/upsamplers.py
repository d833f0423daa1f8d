"""The rows of the upsampler benchmark and their features, computed in one place.

A :class:`Row` is one row of the table: either a built-in method of :mod:`liftkit.methods` (``low``, ``bilinear``,
``nearest``, ``highres``, ``lift``, ``liftK``... with the extractor's own LiFT), or a labelled LiFT file applied k
times (rows ``label`` and ``label@k``), held by its own extractor view that shares the backbone.

:func:`row_features` computes every row of one image: the built-ins through ``ViTExtractor.features(x, plan)`` (the
one dispatch of the methods: one backbone pass for all of them, plus one per ``highres*``), and each file row by that
file's LiFT chain (``view.lift_steps``) on the same backbone map, so a labelled file costs no backbone pass and its
``label@k`` rows share the LiFT steps. Nothing here re-implements a method.

The extractors are duck-typed: ``ext.features(x, plan)`` and, for file rows, ``view.lift_steps(low, x, k)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch

from liftkit.errors import ConfigError
from liftkit.methods import Method


@dataclass(frozen=True)
class Row:
    """One row of the benchmark.

    Attributes:
        label: the row's name (``bilinear``, ``lift2``, ``recipeA``, ``recipeA@2``...).
        method: the built-in method (None for a labelled LiFT file).
        k: LiFT iterations of a file row (ignored for built-ins).
        lifter: for a file row, the extractor view holding that file's LiFT.
        source: the LiFT file of a file row ('' otherwise).
    """

    label: str
    method: Optional[Method] = None
    k: int = 1
    lifter: Any = None
    source: str = ""

    @classmethod
    def builtin(cls, method: Method) -> "Row":
        return cls(method.name, method)

    @property
    def kind(self) -> str:
        return "lift" if self.method is None else self.method.kind

    @property
    def iterations(self) -> int:
        """K of ``liftK`` / ``bilinearK`` / ``highresK`` / a file row; 0 for ``low``."""
        if self.method is None:
            return self.k
        return 0 if self.method.kind == "low" else self.method.iterations

    @property
    def scale(self) -> int:
        """How much denser than the backbone grid the output is (1 for ``low``, 2^k otherwise)."""
        return 2 ** self.iterations


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


def check_unique(rows: Sequence[Row]) -> None:
    """Every row label once (ConfigError naming the clash)."""
    seen = set()
    for r in rows:
        if r.label in seen:
            raise ConfigError(f"row '{r.label}' is listed twice (--methods / --lift_paths labels must be unique)")
        seen.add(r.label)


@torch.no_grad()
def row_features(ext, x: torch.Tensor, rows: Sequence[Row]) -> Dict[str, torch.Tensor]:
    """Features of one image batch for every row.

    Args:
        ext: the main extractor (backbone; its LiFT for the built-in ``lift*`` rows).
        x: (B, 3, H, W) normalised image.
        rows: the rows.
    Returns:
        label -> (B, C, s h, s w) float32 with s = ``Row.scale``; built-ins bit for bit ``ext.features(x, plan)``.
    """
    plan = [r.method for r in rows if r.method is not None]
    files = [r for r in rows if r.method is None]
    low_name = next((m.name for m in plan if m.kind == "low"), None)
    if files and low_name is None:  # the file rows start from the backbone map: add it to the same pass
        low_name = "low"
        plan.append(Method.parse("low"))
    feats = ext.features(x, plan) if plan else {}
    out: Dict[str, torch.Tensor] = {}
    chains: Dict[int, List[torch.Tensor]] = {}
    for r in rows:
        if r.method is not None:
            out[r.label] = feats[r.method.name]
            continue
        if id(r.lifter) not in chains:  # one chain per file, as deep as its deepest row
            depth = max(f.k for f in files if f.lifter is r.lifter)
            chains[id(r.lifter)] = r.lifter.lift_steps(feats[low_name], x, depth)
        out[r.label] = chains[id(r.lifter)][r.k - 1]
    return out
