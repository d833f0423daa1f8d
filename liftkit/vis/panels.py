"""Side-by-side figures (headless matplotlib): the image and PCA pictures of feature maps."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from liftkit.vis.pca import pca_pictures


def save_pca_panel(path: Path, image: Image.Image, maps: Sequence, titles: Sequence[str]) -> Path:
    """Write a PNG: the image, then a PCA-to-RGB picture of each (C, h, w) map (one shared basis), titled.

    Pictures are shown with nearest-neighbour magnification so every feature cell stays visible.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pics = pca_pictures(maps)
    n = 1 + len(pics)
    aspect = image.size[1] / image.size[0]
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2 * aspect + 0.6), squeeze=False)
    axes = axes[0]
    axes[0].imshow(np.asarray(image))
    axes[0].set_title(f"image {image.size[0]}x{image.size[1]}")
    for ax, pic, title in zip(axes[1:], pics, titles):
        ax.imshow(pic, interpolation="nearest")
        ax.set_title(f"{title} ({pic.shape[0]}x{pic.shape[1]})")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return path
