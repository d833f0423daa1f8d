"""Axis-aligned boxes: IoU, CorLoc and box drawings (the annotated-image record, box checks: liftkit.data.boxes).

Convention: a box is ``(x1, y1, x2, y2)`` in continuous pixel coordinates of the original image, ``0 <= x1 <= x2 <=
W`` and ``0 <= y1 <= y2 <= H``; a pixel with 0-based index i covers [i, i+1). Its area is ``(x2 - x1) * (y2 - y1)``
(no "+1"), as in the LOST/TokenCut evaluation code. VOC's 1-based inclusive integer boxes become ``(xmin - 1, ymin -
1, xmax, ymax)``; COCO's ``[x, y, w, h]`` becomes ``(x, y, x + w, y + h)`` rounded to integers (LOST's choice).

CorLoc (correct localisation): the fraction of images whose predicted box has IoU >= 0.5 with at least one
ground-truth box of that image.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from liftkit.data.boxes import AnnotatedImage, BoxDataset, check_boxes  # noqa: F401  (re-exported)

CORLOC_IOU = 0.5


def box_iou(box: Sequence[float], boxes: np.ndarray) -> np.ndarray:
    """IoU of one box with each of n boxes.

    Args:
        box: ``(x1, y1, x2, y2)``.
        boxes: (n, 4).
    Returns:
        (n,) float64 in [0, 1]; a pair whose union is empty has IoU 0.
    """
    a = np.asarray(box, dtype=np.float64).reshape(4)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    iw = (np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0])).clip(min=0)
    ih = (np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1])).clip(min=0)
    inter = iw * ih
    area_a = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)
    area_b = (b[:, 2] - b[:, 0]).clip(min=0) * (b[:, 3] - b[:, 1]).clip(min=0)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def boxes_to_input_frame(boxes: np.ndarray, image_hw: Tuple[int, int], input_hw: Tuple[int, int]) -> np.ndarray:
    """Ground-truth boxes moved to the resized network input as LOST / TokenCut (and the official LiFT
    eval_obj_disc.py) do with a fixed input size: scaled by (W'/W, H'/H), then truncated to integers.

    Args:
        boxes: (N, 4) ``(x1, y1, x2, y2)`` in the image; image_hw: (H, W); input_hw: (H', W').
    Returns:
        (N, 4) float64 in the input frame.
    """
    (h, w), (th, tw) = image_hw, input_hw
    scaled = np.asarray(boxes, np.float64).reshape(-1, 4) * np.array([tw / w, th / h, tw / w, th / h])
    return scaled.astype(np.int32).astype(np.float64)


def best_iou(box: Sequence[float], gt_boxes: np.ndarray) -> float:
    """Largest IoU of ``box`` with any ground-truth box (0 when there is none)."""
    ious = box_iou(box, gt_boxes)
    return float(ious.max()) if ious.size else 0.0


def is_correct(box: Sequence[float], gt_boxes: np.ndarray, threshold: float = CORLOC_IOU) -> bool:
    """True when ``box`` has IoU >= ``threshold`` with at least one ground-truth box."""
    return best_iou(box, gt_boxes) >= threshold


def corloc(pred_boxes: Sequence[Sequence[float]], gt_boxes: Sequence[np.ndarray],
           threshold: float = CORLOC_IOU) -> float:
    """CorLoc over a data set: the fraction of images whose one predicted box is correct.

    Args:
        pred_boxes: one ``(x1, y1, x2, y2)`` per image.
        gt_boxes: one (n_i, 4) array per image.
    Returns:
        a fraction in [0, 1] (not a percentage).
    """
    if len(pred_boxes) != len(gt_boxes):
        raise ValueError(f"{len(pred_boxes)} predictions for {len(gt_boxes)} images")
    if not pred_boxes:
        raise ValueError("CorLoc of an empty data set")
    hits = sum(is_correct(p, g, threshold) for p, g in zip(pred_boxes, gt_boxes))
    return hits / len(pred_boxes)


def draw_boxes(image, pred: Optional[Sequence[float]], gt_boxes: Optional[np.ndarray] = None,
               caption: str = ""):
    """A copy of a PIL image with the ground-truth boxes (green) and the predicted box (red, thicker).

    Args:
        image: RGB ``PIL.Image`` at the resolution the boxes refer to.
        pred: ``(x1, y1, x2, y2)`` or None.
        gt_boxes: (n, 4) or None.
        caption: text written in the top-left corner (e.g. method and IoU).
    """
    from PIL import ImageDraw

    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 250))
    for b in [] if gt_boxes is None else np.asarray(gt_boxes).reshape(-1, 4):
        draw.rectangle([float(v) for v in b], outline=(0, 220, 0), width=width)
    if pred is not None:
        draw.rectangle([float(v) for v in pred], outline=(255, 30, 30), width=width + 1)
    if caption:
        draw.rectangle([0, 0, 7 * len(caption) + 6, 14], fill=(0, 0, 0))
        draw.text((3, 2), caption, fill=(255, 255, 255))
    return out
