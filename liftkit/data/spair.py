"""SPair-71k in its native layout: the pair lists, the pair annotations, and checks on both.

Layout (as distributed by the dataset authors)::

    <root>/JPEGImages/<category>/<image>.jpg
    <root>/ImageAnnotation/<category>/<image>.json      (not needed here)
    <root>/PairAnnotation/{trn,val,test}/<pair>.json
    <root>/Layout/large/{trn,val,test}.txt              one pair name per line

A pair name is ``<id>-<source stem>-<target stem>:<category>`` (e.g. ``000271-2009_001056-2008_007604:aeroplane``)
and its annotation is ``PairAnnotation/<split>/<name>.json`` with (among others) the fields used here:
``category``, ``src_imname`` / ``trg_imname``, ``src_imsize`` / ``trg_imsize`` (``[W, H, 3]``),
``src_bndbox`` / ``trg_bndbox`` (``[x1, y1, x2, y2]`` pixels), ``src_kps`` / ``trg_kps`` (K x ``[x, y]`` pixels, the
keypoints visible in both images, in corresponding order) and ``kps_ids`` (K keypoint ids of the category).

Every pair that is read is checked: the JSON parses and has those fields with sane types, the category matches the
pair name, both images exist and have the size the annotation states, both keypoint lists have K points inside
``[0, W] x [0, H]`` (SPair's boxes reach the image's far edge, so the edge is allowed) and both boxes have a positive
size inside the image. A failed check raises one :class:`DatasetError` line naming the file and the problem.

Selection is deterministic: categories in sorted order, pairs in sorted name order within a category. A per-category
sample draws from one ``numpy.random.RandomState(seed)`` in that order, without replacement by default; with
``with_replacement`` it draws ``rng.choice(n, N)`` like the official LiFT script (which seeds numpy globally the
same way), so duplicates are possible there.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from liftkit.errors import DatasetError, first_line

SPLITS = ("trn", "val", "test")
LAYOUT = ("large",)


@dataclass(frozen=True)
class SpairPair:
    """One annotated image pair.

    Attributes:
        name: the pair name (``<id>-<src>-<trg>:<category>``).
        category: object category.
        annotation: the pair's JSON file.
        src_image, trg_image: image files.
        src_size, trg_size: (W, H) in pixels, as checked against the image files.
        src_kps, trg_kps: (K, 2) float64 ``(x, y)`` pixel coordinates; row i of both is the same keypoint.
        src_bbox, trg_bbox: (4,) float64 ``(x1, y1, x2, y2)``.
        kps_ids: the K keypoint ids.
    """

    name: str
    category: str
    annotation: Path
    src_image: Path
    trg_image: Path
    src_size: Tuple[int, int]
    trg_size: Tuple[int, int]
    src_kps: np.ndarray
    trg_kps: np.ndarray
    src_bbox: np.ndarray
    trg_bbox: np.ndarray
    kps_ids: Tuple[str, ...]

    @property
    def num_keypoints(self) -> int:
        return int(self.src_kps.shape[0])


@dataclass
class SpairSplit:
    """The pairs of a split that were selected and read.

    Attributes:
        pairs: readable pairs, grouped by category (sorted), sorted by name within a category (with duplicates when
            sampled with replacement).
        skipped: one message per selected pair that failed its checks (only when ``skip_bad``).
        selected: number of pair names selected before reading.
    """

    pairs: List[SpairPair]
    skipped: List[str] = field(default_factory=list)
    selected: int = 0

    def categories(self) -> List[str]:
        """Categories with at least one readable pair, sorted."""
        return sorted({p.category for p in self.pairs})


def category_of(name: str) -> str:
    """``"000271-2009_001056-2008_007604:aeroplane"`` -> ``"aeroplane"``."""
    if ":" not in name:
        raise DatasetError(f"pair name '{name}' has no ':<category>' suffix; is this a SPair-71k Layout file?")
    return name.rsplit(":", 1)[1]


def check_root(root: Path, split: str) -> None:
    """Refuse a split or a dataset folder that lacks what the loader reads (one line naming the missing path)."""
    root = Path(root)
    if split not in SPLITS:
        raise DatasetError(f"unknown --split '{split}'; SPair-71k has: {', '.join(SPLITS)}")
    if not root.is_dir():
        raise DatasetError(f"--data_root '{root}' is not a folder; point it at the SPair-71k root "
                           "(the folder holding JPEGImages/, PairAnnotation/ and Layout/)")
    for sub in ("JPEGImages", f"PairAnnotation/{split}", "Layout/large"):
        if not (root / sub).is_dir():
            raise DatasetError(f"'{root / sub}' is missing: --data_root must be an SPair-71k root with "
                               f"JPEGImages/, PairAnnotation/{split}/ and Layout/large/")
    layout = root / "Layout" / "large" / f"{split}.txt"
    if not layout.is_file():
        raise DatasetError(f"'{layout}' is missing: it lists the {split} pairs of SPair-71k")


def list_pair_names(root: Path, split: str = "test") -> List[str]:
    """Pair names of a split from ``Layout/large/<split>.txt`` (blank lines ignored, duplicates refused)."""
    check_root(root, split)
    layout = Path(root) / "Layout" / "large" / f"{split}.txt"
    names = [line.strip() for line in layout.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"'{layout}' lists no pairs")
    seen = set()
    for i, name in enumerate(names):
        category_of(name)
        if name in seen:
            raise DatasetError(f"'{layout}' line {i + 1}: pair '{name}' is listed twice")
        seen.add(name)
    return names


def select_pairs(
    names: Sequence[str],
    pairs_per_category: Optional[int] = None,
    seed: int = 0,
    with_replacement: bool = False,
    categories: Optional[Sequence[str]] = None,
) -> List[str]:
    """Group pair names by category (sorted) and optionally sample N per category.

    Args:
        names: pair names.
        pairs_per_category: None or 0 for all pairs; otherwise N per category. Without replacement a category with
            fewer than N pairs gives all of them.
        seed: seed of the one RandomState the categories draw from, in sorted category order.
        with_replacement: draw ``rng.choice(n, N)`` (the official LiFT script's sampling; duplicates possible).
        categories: keep only these categories (unknown names raise DatasetError).
    Returns:
        the selected names, category by category, sorted within a category (duplicates adjacent).
    """
    by_cat: Dict[str, List[str]] = {}
    for name in names:
        by_cat.setdefault(category_of(name), []).append(name)
    cats = sorted(by_cat)
    if categories:
        unknown = [c for c in categories if c not in by_cat]
        if unknown:
            raise DatasetError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                               f"this split has: {', '.join(cats)}")
        cats = [c for c in cats if c in set(categories)]
    if pairs_per_category is not None and pairs_per_category < 0:
        raise DatasetError(f"--pairs_per_category {pairs_per_category}: must be >= 0 (0 = all pairs)")
    rng = np.random.RandomState(seed)
    out: List[str] = []
    for cat in cats:
        group = sorted(by_cat[cat])
        if pairs_per_category:
            if with_replacement:
                idx = rng.choice(len(group), pairs_per_category)
            else:
                idx = rng.choice(len(group), min(pairs_per_category, len(group)), replace=False)
            group = [group[i] for i in sorted(idx)]
        out += group
    return out


# ----------------------------------------------------------------------------------------------------- reading
def _image_size(path: Path, cache: Dict[Path, Tuple[int, int]]) -> Tuple[int, int]:
    """(W, H) from the image header (not decoded), cached."""
    if path not in cache:
        if not path.is_file():
            raise DatasetError(f"image '{path}' is missing")
        try:
            with Image.open(path) as img:
                cache[path] = img.size
        except (UnidentifiedImageError, OSError) as exc:
            raise DatasetError(f"image '{path}' cannot be read ({type(exc).__name__}); re-download it") from None
    return cache[path]


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _points(data: dict, key: str, ann: Path) -> np.ndarray:
    v = data[key]
    if not isinstance(v, list) or not all(isinstance(p, list) and len(p) == 2 and all(map(_number, p)) for p in v):
        raise DatasetError(f"'{ann}': '{key}' must be a list of [x, y] number pairs")
    return np.asarray(v, dtype=np.float64).reshape(-1, 2)


def _box(data: dict, key: str, ann: Path) -> np.ndarray:
    v = data[key]
    if not isinstance(v, list) or len(v) != 4 or not all(map(_number, v)):
        raise DatasetError(f"'{ann}': '{key}' must be [x1, y1, x2, y2] (4 numbers)")
    return np.asarray(v, dtype=np.float64)


def _imsize(data: dict, key: str, ann: Path) -> Tuple[int, int]:
    v = data[key]
    if not isinstance(v, list) or len(v) < 2 or not all(isinstance(x, int) and x > 0 for x in v[:2]):
        raise DatasetError(f"'{ann}': '{key}' must be [W, H, 3] (positive integers)")
    return int(v[0]), int(v[1])


REQUIRED = ("category", "src_imname", "trg_imname", "src_imsize", "trg_imsize", "src_bndbox", "trg_bndbox",
            "src_kps", "trg_kps")


def load_pair(root: Path, split: str, name: str, size_cache: Optional[Dict[Path, Tuple[int, int]]] = None) -> SpairPair:
    """Read and check one pair annotation (see the module docstring for the checks).

    Args:
        root: SPair-71k root; split: ``trn`` | ``val`` | ``test``; name: pair name from the Layout list.
        size_cache: image -> (W, H), shared between calls to read each image header once.
    """
    root = Path(root)
    cache = {} if size_cache is None else size_cache
    category = category_of(name)
    ann = root / "PairAnnotation" / split / f"{name}.json"
    if not ann.is_file():
        raise DatasetError(f"pair annotation '{ann}' is missing (listed in Layout/large/{split}.txt)")
    try:
        data = json.loads(ann.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"'{ann}' is not valid JSON ({first_line(exc)}); re-download it") from None
    if not isinstance(data, dict):
        raise DatasetError(f"'{ann}' is not a JSON object")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise DatasetError(f"'{ann}' lacks the field(s) {', '.join(missing)}")
    if data["category"] != category:
        raise DatasetError(f"'{ann}': category '{data['category']}' does not match the pair name's '{category}'")
    src_kps, trg_kps = _points(data, "src_kps", ann), _points(data, "trg_kps", ann)
    if len(src_kps) != len(trg_kps):
        raise DatasetError(f"'{ann}': {len(src_kps)} src_kps but {len(trg_kps)} trg_kps; they must correspond")
    if len(src_kps) == 0:
        raise DatasetError(f"'{ann}' has no keypoints")
    ids = data.get("kps_ids", [str(i) for i in range(len(src_kps))])
    if not isinstance(ids, list) or len(ids) != len(src_kps):
        raise DatasetError(f"'{ann}': 'kps_ids' must list one id per keypoint ({len(src_kps)})")
    out = {}
    for side, kps in (("src", src_kps), ("trg", trg_kps)):
        imname = data[f"{side}_imname"]
        if not isinstance(imname, str) or not imname:
            raise DatasetError(f"'{ann}': '{side}_imname' must be a file name")
        image = root / "JPEGImages" / category / imname
        stated = _imsize(data, f"{side}_imsize", ann)
        actual = _image_size(image, cache)
        if actual != stated:
            raise DatasetError(f"'{ann}': {side}_imsize says {stated[0]}x{stated[1]} but '{image}' is "
                               f"{actual[0]}x{actual[1]}; the annotation does not belong to this image")
        w, h = actual
        bad = np.flatnonzero((kps[:, 0] < 0) | (kps[:, 0] > w) | (kps[:, 1] < 0) | (kps[:, 1] > h))
        if bad.size:
            x, y = kps[bad[0]]
            raise DatasetError(f"'{ann}': {side}_kps[{bad[0]}] = ({x:g}, {y:g}) lies outside the {w}x{h} image")
        box = _box(data, f"{side}_bndbox", ann)
        if not (0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h):
            raise DatasetError(f"'{ann}': {side}_bndbox {box.tolist()} is empty or outside the {w}x{h} image")
        out[side] = (image, actual, kps, box)
    return SpairPair(
        name=name, category=category, annotation=ann,
        src_image=out["src"][0], trg_image=out["trg"][0], src_size=out["src"][1], trg_size=out["trg"][1],
        src_kps=out["src"][2], trg_kps=out["trg"][2], src_bbox=out["src"][3], trg_bbox=out["trg"][3],
        kps_ids=tuple(str(i) for i in ids),
    )


def load_split(
    root: Path,
    split: str = "test",
    pairs_per_category: Optional[int] = None,
    seed: int = 0,
    with_replacement: bool = False,
    skip_bad: bool = False,
    categories: Optional[Sequence[str]] = None,
) -> SpairSplit:
    """Select pairs (see :func:`select_pairs`) and read them (see :func:`load_pair`).

    Args:
        skip_bad: record a failing pair's message in ``skipped`` and go on; otherwise its DatasetError propagates.
    """
    names = select_pairs(list_pair_names(root, split), pairs_per_category, seed, with_replacement, categories)
    cache: Dict[Path, Tuple[int, int]] = {}
    loaded: Dict[str, SpairPair] = {}
    result = SpairSplit(pairs=[], selected=len(names))
    for name in names:
        if name not in loaded:
            try:
                loaded[name] = load_pair(root, split, name, cache)
            except DatasetError as exc:
                if not skip_bad:
                    raise
                result.skipped.append(f"{name}: {exc}")
                loaded[name] = None  # type: ignore[assignment]
        if loaded[name] is not None:
            result.pairs.append(loaded[name])
    return result
