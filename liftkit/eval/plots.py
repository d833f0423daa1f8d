"""The LiFT paper's accuracy-versus-cost plot: one point per dense-feature method, FLOPs on the x axis.

Input is the ``methods`` mapping of an evaluation JSON (``eval_spair.py --output_json``; any evaluation that writes
the same shape can reuse it)::

    {"low": {"gflops_per_image": 11.5, "pck": {"mean_over_categories": {"pck@0.1": 0.41, ...}, ...}, ...}, ...}

Methods of the same family (``lift``, ``lift2``, ``lift3``; ``highres``, ``highres2``; ``bilinear``...) are joined by
a line in FLOPs order, as in the paper's figure.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple
from liftkit.io.outputs import atomic_write

FAMILY_STYLE = {
    "low": ("tab:gray", "o"),
    "bilinear": ("tab:blue", "s"),
    "nearest": ("tab:cyan", "v"),
    "highres": ("tab:orange", "^"),
    "lift": ("tab:red", "*"),
}


def method_family(method: str) -> str:
    """``"lift3"`` -> ``"lift"``; ``"highres"`` -> ``"highres"``."""
    return re.sub(r"\d+$", "", method)


def plot_points(methods: Mapping[str, dict], metric: str = "pck@0.1",
                aggregate: str = "mean_over_categories") -> Dict[str, List[Tuple[str, float, float]]]:
    """family -> [(method, GFLOPs, metric value)] sorted by GFLOPs; methods lacking either number are left out."""
    out: Dict[str, List[Tuple[str, float, float]]] = {}
    for name, rec in methods.items():
        gflops = rec.get("gflops_per_image")
        value = rec.get("pck", {}).get(aggregate, {}).get(metric)
        if gflops is None or value is None:
            continue
        out.setdefault(method_family(name), []).append((name, float(gflops), float(value)))
    for fam in out:
        out[fam].sort(key=lambda t: t[1])
    return out


def plot_metric_vs_flops(
    methods: Mapping[str, dict],
    path: Path,
    metric: str = "pck@0.1",
    aggregate: str = "mean_over_categories",
    title: Optional[str] = None,
    ylabel: Optional[str] = None,
) -> Path:
    """Draw ``metric`` (in %) against GFLOPs per image (log scale) and save a PNG.

    Args:
        methods: method -> record (see the module docstring).
        path: output PNG; its folder is created.
    Returns:
        the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = plot_points(methods, metric, aggregate)
    if not points:
        raise ValueError(f"no method has both 'gflops_per_image' and '{aggregate}.{metric}' to plot")
    fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=120)
    for fam, pts in points.items():
        color, marker = FAMILY_STYLE.get(fam, ("tab:purple", "D"))
        xs, ys = [p[1] for p in pts], [100 * p[2] for p in pts]
        ax.plot(xs, ys, color=color, marker=marker, markersize=8, linewidth=1.5, label=fam)
        for name, x, y in pts:
            ax.annotate(name, (x, 100 * y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("GFLOPs per image")
    ax.set_ylabel(ylabel or f"{metric.upper()} (%)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format=path.suffix[1:] or "png")
    plt.close(fig)
    return path
