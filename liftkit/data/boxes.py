"""Box-annotated images: the record a detection data set loader returns, and the check of its ground-truth boxes.

Convention: a box is ``(x1, y1, x2, y2)`` in continuous pixel coordinates of the original image, ``0 <= x1 <= x2 <=
W`` and ``0 <= y1 <= y2 <= H``; a pixel with 0-based index i covers [i, i+1). VOC's 1-based inclusive integer boxes
become ``(xmin - 1, ymin - 1, xmax, ymax)``; COCO's ``[x, y, w, h]`` becomes ``(x, y, x + w, y + h)`` rounded to
integers (LOST's choice). Scoring boxes (IoU, CorLoc) is :mod:`liftkit.eval.boxes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from liftkit.errors import DatasetError

# Annotations may overshoot the image border by rounding (COCO's float boxes, VOC's 1-based xmax = W); boxes that
# overshoot by at most this many pixels are clipped, beyond it they are refused as broken annotations.
BORDER_TOLERANCE_PX = 1.0


@dataclass(frozen=True)
class AnnotatedImage:
    """One image of a detection data set and its ground-truth boxes.

    Attributes:
        name: the data set's id of the image (VOC ``000001``, COCO ``000000262145``, folder: file stem).
        image_path: the image file.
        width, height: image size in pixels (0 when unknown, i.e. a plain folder before the image is read).
        boxes: (n, 4) float64 ground-truth boxes ``(x1, y1, x2, y2)``, or None when the data set has no ground truth.
        labels: n class names (VOC) or category ids as strings (COCO).
        difficult: n flags (VOC ``<difficult>``; all False for COCO).
    """

    name: str
    image_path: Path
    width: int
    height: int
    boxes: Optional[np.ndarray] = None
    labels: Tuple[str, ...] = ()
    difficult: Tuple[bool, ...] = ()


@dataclass
class BoxDataset:
    """The usable images of a data set and the items skipped with ``--skip_bad``.

    Attributes:
        name: the data set's name (``voc07``, ``coco20k``, ...).
        images: the images to evaluate, in the data set's order.
        skipped: ``(item name, one-line reason)`` for every bad item that was skipped.
        has_ground_truth: False for a plain image folder (boxes only, no score).
    """

    name: str
    images: List[AnnotatedImage] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    has_ground_truth: bool = True

    @property
    def num_objects(self) -> int:
        """Total number of ground-truth boxes."""
        return sum(0 if im.boxes is None else len(im.boxes) for im in self.images)


def check_boxes(boxes: np.ndarray, width: int, height: int, where: str) -> np.ndarray:
    """Validate ground-truth boxes against the image size; clip overshoots up to :data:`BORDER_TOLERANCE_PX`.

    Args:
        boxes: (n, 4) ``(x1, y1, x2, y2)``.
        width, height: image size in pixels.
        where: names the culprit in the error message (file and object).
    Returns:
        (n, 4) float64, clipped to the image.
    Raises:
        DatasetError: a box with x2 < x1 or y2 < y1, a non-finite coordinate, or one outside the image by more than
            the tolerance.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    tol = BORDER_TOLERANCE_PX
    for i, (x1, y1, x2, y2) in enumerate(b):
        if not np.all(np.isfinite(b[i])):
            raise DatasetError(f"{where}: box {i} has a non-finite coordinate {tuple(b[i])}; fix the annotation")
        if x2 < x1 or y2 < y1:
            raise DatasetError(f"{where}: box {i} ({x1:g}, {y1:g}, {x2:g}, {y2:g}) has x2 < x1 or y2 < y1; "
                               "fix the annotation or pass --skip_bad")
        if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
            raise DatasetError(f"{where}: box {i} ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside the {width}x{height} "
                               "image; fix the annotation or pass --skip_bad")
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    return b


def annotation_number(value, where: str, field: str, integer: bool = False, minimum: Optional[float] = None,
                      maximum: float = 1e7, text_ok: bool = True):
    """One numeric annotation field, validated: a number (or, if ``text_ok``, numeric text), finite, whole if
    ``integer``, within [minimum, maximum].

    Args:
        value: the raw value (JSON number, XML text...); booleans, lists, dicts, ``nan``, ``1e999`` are refused.
        where: the file and record (e.g. ``COCO annotations 'x.json' annotation 3``).
        field: the field's name (``bbox[2]``, ``<width>``...).
        integer: the value must be a whole number (ids, sizes); returned as int.
        text_ok: accept numeric text (XML); False for JSON fields that must be numbers (COCO ids).
    Raises:
        DatasetError: one line naming file, record and field and what is wrong.
    """
    bad, number = None, 0.0
    kinds = (int, float, str) if text_ok else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        bad = f"is {type(value).__name__} {str(value)[:40]!r}, not a number"
    else:
        try:
            number = float(value)
        except (ValueError, OverflowError):
            bad = f"is {str(value)[:40]!r}, not a number"
        else:
            if not math.isfinite(number):
                bad = f"is {str(value)[:40]!r}, not a finite number"
            elif integer and not number.is_integer():
                bad = f"is {str(value)[:40]!r}, not a whole number"
            elif minimum is not None and number < minimum:
                bad = f"is {number:g}, below {minimum:g}"
            elif abs(number) > maximum:
                bad = f"is {number:g}, beyond {maximum:g}"
    if bad is not None:
        raise DatasetError(f"{where}: {field} {bad}; fix the annotation or pass --skip_bad")
    return int(number) if integer else number
