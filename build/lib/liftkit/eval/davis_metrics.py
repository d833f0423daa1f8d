"""DAVIS J&F (region similarity J and boundary accuracy F), written from the DAVIS definition.

Follows the official davis2017-evaluation code (semi-supervised task) so its numbers are reproduced:

* **J** (:func:`db_eval_iou`): IoU of the predicted and ground-truth object masks; an object absent from both
  (empty union) scores 1.
* **F** (:func:`f_measure`): F-measure of boundary precision and recall. Boundaries are the one-pixel maps of
  :func:`seg2bmap` (a pixel is a boundary pixel if it differs from its east, south or south-east neighbour). A
  boundary pixel counts as matched if the other mask's boundary, dilated by a disk of radius
  ``ceil(bound_th * image diagonal)`` px (``bound_th = 0.008``: 8 px at 854x480), covers it. Empty-boundary
  conventions: both empty -> 1; exactly one empty -> 0.
* Per object, over the evaluated frames (:func:`db_statistics`): **Mean**; **Recall** = fraction of frames
  scoring > 0.5; **Decay** = mean of the first of 4 temporal bins minus mean of the last (the bins overlap by one
  frame at their edges, as in the official code).
* The semi-supervised task skips the first (given) and last annotated frames.
* Objects of a sequence are 1..N with N the largest id in frame 0; a predicted id above N is an error, a missing
  id an empty prediction.
* Global figures average the per-object statistics over all objects of all sequences;
  ``J&F-Mean = (J-Mean + F-Mean) / 2``.
"""

from __future__ import annotations

import math
import sys
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from skimage.morphology import disk

from liftkit.data.davis import DavisSequence, load_davis, read_label_png
from liftkit.errors import DatasetError, LiftKitError

BOUND_TH = 0.008
RECALL_THRESHOLD = 0.5
N_DECAY_BINS = 4
STAT_KEYS = ("J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


def db_eval_iou(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Region similarity J (Jaccard index).

    Args:
        gt, pred: (..., H, W) boolean masks (anything non-zero is foreground).
    Returns:
        (...) float64 IoU; 1 where both masks are empty.
    """
    gt = np.asarray(gt).astype(bool)
    pred = np.asarray(pred).astype(bool)
    if gt.shape != pred.shape:
        raise ValueError(f"mask shapes differ: {gt.shape} vs {pred.shape}")
    inter = np.sum(gt & pred, axis=(-2, -1))
    union = np.sum(gt | pred, axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        j = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    return np.asarray(j, dtype=np.float64)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel boundary map of a binary mask (the official ``seg2bmap`` at the mask's own size).

    A pixel is on the boundary if it differs from its east, south or south-east neighbour (pixels outside the image
    count as background); on the last row only the east neighbour is compared, on the last column only the south
    one, and the bottom-right pixel is never a boundary.

    Args:
        seg: (H, W) mask, non-zero = foreground.
    Returns:
        (H, W) bool.
    """
    seg = np.asarray(seg).astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def boundary_tolerance(shape_hw: Tuple[int, int], bound_th: float = BOUND_TH) -> int:
    """Dilation radius in pixels: ``bound_th`` itself if >= 1, else ``ceil(bound_th * diagonal)``."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(shape_hw[0], shape_hw[1])))


@lru_cache(maxsize=8)
def _disk(radius: int) -> np.ndarray:
    return disk(radius).astype(np.uint8)


def f_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """Boundary F-measure of one frame.

    Args:
        pred, gt: (H, W) masks (non-zero = foreground).
        bound_th: tolerance as a fraction of the image diagonal (< 1) or in pixels (>= 1).
    Returns:
        F in [0, 1]; 1 if neither mask has a boundary, 0 if exactly one has.
    """
    pred_b = seg2bmap(pred)
    gt_b = seg2bmap(gt)
    se = _disk(boundary_tolerance(pred_b.shape, bound_th))
    pred_dil = cv2.dilate(pred_b.astype(np.uint8), se) > 0
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), se) > 0
    n_pred = int(pred_b.sum())
    n_gt = int(gt_b.sum())
    if n_pred == 0 and n_gt == 0:
        precision = recall = 1.0
    elif n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        precision = float(np.sum(pred_b & gt_dil)) / n_pred
        recall = float(np.sum(gt_b & pred_dil)) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def db_eval_boundary(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH) -> np.ndarray:
    """Boundary accuracy F per frame.

    Args:
        gt, pred: (T, H, W) or (H, W) masks.
    Returns:
        (T,) float64 (or a 0-d array for one frame).
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"mask shapes differ: {gt.shape} vs {pred.shape}")
    if gt.ndim == 2:
        return np.asarray(f_measure(pred, gt, bound_th), dtype=np.float64)
    return np.array([f_measure(pred[t], gt[t], bound_th) for t in range(gt.shape[0])], dtype=np.float64)


def decay_bins(n: int, n_bins: int = N_DECAY_BINS) -> list:
    """Frame index ranges [start, stop) of the official decay bins for ``n`` frames.

    Edges are ``round(linspace(1, n, n_bins + 1)) - 1``; bin i spans edge i to edge i+1 *inclusive*, so neighbouring
    bins share their edge frame (e.g. n = 9 -> [0, 3), [2, 5), [4, 7), [6, 9)).
    """
    edges = (np.round(np.linspace(1, n, n_bins + 1) + 1e-10) - 1).astype(np.int64)
    return [(int(edges[i]), int(edges[i + 1]) + 1) for i in range(n_bins)]


def db_statistics(values: Sequence[float]) -> Tuple[float, float, float]:
    """(mean, recall, decay) of one object's per-frame J or F (NaNs ignored in mean and recall).

    Recall = fraction of frames > 0.5; decay = mean(first bin) - mean(last bin) of :func:`decay_bins`.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    bins = decay_bins(len(v))
    with warnings.catch_warnings():  # all-NaN slices give NaN, as in the official code
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(v))
        recall = float(np.nanmean(v > RECALL_THRESHOLD))
        decay = float(np.nanmean(v[bins[0][0]:bins[0][1]]) - np.nanmean(v[bins[-1][0]:bins[-1][1]]))
    return mean, recall, decay


def evaluate_sequence(
    gt_labels: np.ndarray, pred_labels: np.ndarray, num_objects: int, bound_th: float = BOUND_TH
) -> Tuple[np.ndarray, np.ndarray]:
    """Per-object, per-frame J and F of one sequence.

    Args:
        gt_labels, pred_labels: (T, H, W) integer object-id maps of the evaluated frames.
        num_objects: N; objects are ids 1..N.
    Returns:
        (J, F), each (N, T) float64.
    """
    if gt_labels.shape != pred_labels.shape:
        raise ValueError(f"label map shapes differ: {gt_labels.shape} vs {pred_labels.shape}")
    t = gt_labels.shape[0]
    j = np.zeros((num_objects, t))
    f = np.zeros((num_objects, t))
    for k in range(num_objects):
        gt_k = gt_labels == k + 1
        pred_k = pred_labels == k + 1
        j[k] = db_eval_iou(gt_k, pred_k)
        f[k] = db_eval_boundary(gt_k, pred_k, bound_th)
    return j, f


def object_statistics(j: np.ndarray, f: np.ndarray) -> Dict[str, float]:
    """The six per-object figures (J/F Mean, Recall, Decay) and J&F-Mean from per-frame (T,) J and F."""
    jm, jr, jd = db_statistics(j)
    fm, fr, fd = db_statistics(f)
    return {"J&F-Mean": (jm + fm) / 2, "J-Mean": jm, "J-Recall": jr, "J-Decay": jd,
            "F-Mean": fm, "F-Recall": fr, "F-Decay": fd}


def summarize(per_object: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """Global figures: each statistic averaged over all objects; ``J&F-Mean = (J-Mean + F-Mean) / 2``."""
    if not per_object:
        return {k: float("nan") for k in ("J&F-Mean",) + STAT_KEYS}
    out = {k: float(np.mean([o[k] for o in per_object.values()])) for k in STAT_KEYS}
    return {"J&F-Mean": (out["J-Mean"] + out["F-Mean"]) / 2, **out}


def read_result_masks(results_dir: Union[str, Path], seq: DavisSequence, names: Sequence[str]) -> np.ndarray:
    """A method's predicted masks ``<results_dir>/<seq>/<name>.png`` for the given frames.

    Returns:
        (T, H, W) uint8 object ids. Missing files, other sizes and non-indexed PNGs raise :class:`DatasetError`.
    """
    folder = Path(results_dir) / seq.name
    if not folder.is_dir():
        raise DatasetError(f"sequence '{seq.name}': result folder '{folder}' is missing; run the method on it first")
    out = np.empty((len(names), *seq.size_hw), dtype=np.uint8)
    for t, name in enumerate(names):
        path = folder / f"{name}.png"
        labels = read_label_png(path, f"sequence '{seq.name}' frame {name} result")
        if labels.shape != tuple(seq.size_hw):
            raise DatasetError(
                f"sequence '{seq.name}' frame {name}: result '{path}' is {labels.shape[1]}x{labels.shape[0]} px, "
                f"the frames are {seq.size_hw[1]}x{seq.size_hw[0]}; write results at the frames' resolution"
            )
        out[t] = labels
    return out


def evaluate_davis_sequence(
    seq: DavisSequence, results_dir: Union[str, Path], bound_th: float = BOUND_TH, max_frames: Optional[int] = None
) -> Dict[str, Dict[str, float]]:
    """Semi-supervised J&F of one sequence: ``{"<seq>_<k>": object_statistics}`` for objects k = 1..N.

    The first and last annotated frames are skipped (the official semi-supervised protocol).

    Args:
        max_frames: only the sequence's first ``max_frames`` frames count (a truncated run); None = all.
    """
    names, gt = seq.load_annotations()
    if max_frames is not None:
        kept = set(seq.frame_names[:max_frames])
        keep = [i for i, n in enumerate(names) if n in kept]
        names, gt = tuple(names[i] for i in keep), gt[keep]
    num_objects = int(gt[0].max())
    names, gt = names[1:-1], gt[1:-1]
    if not names:
        raise DatasetError(f"sequence '{seq.name}' has fewer than 3 annotated frames (first and last are not scored); "
                           "nothing to evaluate")
    pred = read_result_masks(results_dir, seq, names)
    top = int(pred.max())
    if top > num_objects:
        frame = names[int(np.argmax(pred.reshape(len(names), -1).max(axis=1)))]
        raise DatasetError(
            f"sequence '{seq.name}' frame {frame}: result has object id {top} but the sequence has only "
            f"{num_objects} object(s); results must use frame 0's ids"
        )
    j, f = evaluate_sequence(gt, pred, num_objects, bound_th)
    return {f"{seq.name}_{k + 1}": object_statistics(j[k], f[k]) for k in range(num_objects)}


def evaluate_results_dir(
    davis_root: Union[str, Path],
    results_dir: Union[str, Path],
    set_name: str = "val",
    sequences: Optional[Sequence[str]] = None,
    resolution: str = "480p",
    skip_failed: bool = False,
    progress: bool = False,
    max_frames: Optional[int] = None,
) -> dict:
    """Score predicted masks already written as ``<results_dir>/<seq>/<frame>.png`` (semi-supervised J&F).

    Args:
        davis_root: DAVIS root (``JPEGImages``, ``Annotations``, ``ImageSets``).
        results_dir: one folder per sequence of palette PNGs named like the annotations.
        set_name: ``ImageSets/2017/<set_name>.txt``.
        sequences: optional subset of the set.
        skip_failed: record a failing sequence under ``"failures"`` and go on (excluded from the global figures)
            instead of raising.
        progress: show a tqdm bar.
        max_frames: score only the first ``max_frames`` frames of each sequence (for truncated runs).
    Returns:
        ``{"global": {J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall, F-Decay},
        "per_object": {"<seq>_<k>": same keys}, "per_sequence": {"<seq>": same keys averaged over its objects},
        "n_objects", "n_sequences", "failures": {"<seq>": message}}``.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise DatasetError(f"results folder '{results_dir}' is missing; pass the folder holding <seq>/<frame>.png")
    seqs = load_davis(davis_root, set_name, sequences, resolution)
    per_object: Dict[str, Dict[str, float]] = {}
    per_sequence: Dict[str, Dict[str, float]] = {}
    failures: Dict[str, str] = {}
    iterator = seqs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(seqs, desc="J&F", unit="seq", file=sys.stderr)
    for seq in iterator:
        try:
            objs = evaluate_davis_sequence(seq, results_dir, max_frames=max_frames)
        except LiftKitError as exc:
            if not skip_failed:
                raise
            failures[seq.name] = str(exc)
            continue
        per_object.update(objs)
        per_sequence[seq.name] = summarize(objs)
    return {
        "global": summarize(per_object),
        "per_object": per_object,
        "per_sequence": per_sequence,
        "n_objects": len(per_object),
        "n_sequences": len(per_sequence),
        "failures": failures,
    }
