"""Images with an object mask, for the boundary probe: DAVIS first frames and VOC ``SegmentationObject`` PNGs.

Each item is the RGB image file plus a (H, W) bool foreground mask (every object against the background) and a
(H, W) bool void mask (VOC's 255 band drawn along object outlines, which belongs to neither side).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Union

import numpy as np

from liftkit.data.davis import VOID_LABEL, load_davis, read_label_png
from liftkit.errors import DatasetError


@dataclass
class MaskedImage:
    """An image and its object mask.

    Attributes:
        name: ``<set>/<id>`` (e.g. ``davis/blackswan``, ``voc07/000032``).
        image_path: the RGB image.
        foreground: (H, W) bool, any object.
        void: (H, W) bool, pixels that count for neither side.
    """

    name: str
    image_path: Path
    foreground: np.ndarray
    void: np.ndarray


def davis_first_frames(root: Union[str, Path], set_name: str = "val", resolution: str = "480p") -> List[MaskedImage]:
    """Frame 0 of every sequence of a DAVIS set with its annotation (void, if any, is marked void)."""
    out = []
    for seq in load_davis(root, set_name, None, resolution):
        labels = read_label_png(seq.annotation_paths[0], f"sequence '{seq.name}' first mask")
        if labels.shape != tuple(seq.size_hw):
            raise DatasetError(f"sequence '{seq.name}': mask '{seq.annotation_paths[0]}' does not have the frames' "
                               f"size {seq.size_hw[1]}x{seq.size_hw[0]}")
        out.append(MaskedImage(f"davis/{seq.name}", seq.frame_paths[0], (labels > 0) & (labels != VOID_LABEL),
                               labels == VOID_LABEL))
    return out


def voc_object_masks(root: Union[str, Path], name: str = "voc") -> List[MaskedImage]:
    """Every ``SegmentationObject/<id>.png`` of a VOC folder (``VOCdevkit/VOC2007``) with ``JPEGImages/<id>.jpg``."""
    root = Path(root)
    seg_dir = root / "SegmentationObject"
    if not seg_dir.is_dir():
        raise DatasetError(f"'{root}' has no SegmentationObject/ folder; point it at VOCdevkit/VOC2007 (or VOC2012)")
    out = []
    for png in sorted(seg_dir.glob("*.png")):
        image = root / "JPEGImages" / f"{png.stem}.jpg"
        if not image.is_file():
            raise DatasetError(f"'{png}' has no image '{image}'; restore it or remove the mask")
        labels = read_label_png(png, "VOC object mask")
        out.append(MaskedImage(f"{name}/{png.stem}", image, (labels > 0) & (labels != VOID_LABEL),
                               labels == VOID_LABEL))
    if not out:
        raise DatasetError(f"'{seg_dir}' holds no .png masks")
    return out
