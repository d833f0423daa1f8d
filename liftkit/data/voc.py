"""PASCAL VOC detection annotations (VOC2007 / VOC2012, VOCdevkit layout) as :class:`BoxDataset`.

Layout (``root`` is e.g. ``VOCdevkit/VOC2007``)::

    JPEGImages/<id>.jpg
    Annotations/<id>.xml
    ImageSets/Main/<set>.txt      (one id per line; ``trainval`` is the CorLoc split of LOST / TokenCut)

When ``ImageSets/Main/<set>.txt`` is absent, every ``Annotations/*.xml`` is used (sorted by id).

Boxes: VOC's 1-based inclusive integers become ``(xmin - 1, ymin - 1, xmax, ymax)`` (see
:mod:`liftkit.eval.boxes`). Difficult and truncated objects are kept by default, as in the LOST/TokenCut code
(``extract_gt_VOC(..., remove_hards=False)`` is what their CorLoc numbers use); ``include_difficult=False`` drops
difficult boxes.

Bad items (missing XML or JPEG, unreadable XML, an XML without objects, a box outside the image) raise one
:class:`DatasetError` naming the file, or are skipped and listed in ``BoxDataset.skipped`` with ``skip_bad=True``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

from liftkit.errors import DatasetError
from liftkit.data.boxes import AnnotatedImage, BoxDataset, annotation_number, check_boxes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def _text(node: ET.Element, tag: str, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DatasetError(f"{where}: missing <{tag}>; fix or remove the annotation file")
    return child.text.strip()


def _number(node: ET.Element, tag: str, where: str, **limits) -> float:
    return annotation_number(_text(node, tag, where), where, f"<{tag}>", **limits)


def _image_size(path: Path) -> Tuple[int, int]:
    """(width, height) from the image header (no decoding)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"'{path}' cannot be read as an image ({exc}); re-download or remove it") from None


def find_image(root: Path, image_id: str, filename: Optional[str] = None) -> Path:
    """``JPEGImages/<filename>`` or ``JPEGImages/<id>.<ext>``; DatasetError if there is none."""
    folder = root / "JPEGImages"
    candidates = ([folder / filename] if filename else []) + [folder / f"{image_id}{e}" for e in IMAGE_EXTENSIONS]
    for c in candidates:
        if c.is_file():
            return c
    raise DatasetError(f"VOC image '{candidates[0]}' is missing; check --data_root or pass --skip_bad")


def parse_voc_xml(xml_path: Union[str, Path], root: Optional[Path] = None,
                  include_difficult: bool = True) -> AnnotatedImage:
    """Read one VOC annotation file.

    Args:
        xml_path: ``Annotations/<id>.xml``.
        root: the VOC folder holding ``JPEGImages`` (default: the XML's grandparent).
        include_difficult: keep ``<difficult>1`` objects (LOST/TokenCut do).
    Returns:
        :class:`AnnotatedImage` with (n, 4) boxes, class names and difficult flags.
    Raises:
        DatasetError: missing/unreadable XML, no objects, a malformed or out-of-image box, a missing image.
    """
    xml_path = Path(xml_path)
    root = Path(root) if root is not None else xml_path.parent.parent
    image_id = xml_path.stem
    if not xml_path.is_file():
        raise DatasetError(f"VOC annotation '{xml_path}' is missing; check --data_root/--set or pass --skip_bad")
    try:
        tree = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise DatasetError(f"VOC annotation '{xml_path}' is not valid XML ({exc}); re-download it") from None
    where = f"VOC annotation '{xml_path}'"
    filename_node = tree.find("filename")
    filename = filename_node.text.strip() if filename_node is not None and filename_node.text else None
    image_path = find_image(root, image_id, filename)
    size = tree.find("size")
    dims = dict(integer=True, minimum=0, maximum=1e6)  # 0 means unknown (some VOC files have it)
    width = _number(size, "width", where, **dims) if size is not None and size.find("width") is not None else 0
    height = _number(size, "height", where, **dims) if size is not None and size.find("height") is not None else 0
    if width <= 0 or height <= 0:  # some VOC files have <width>0</width>: read the image header instead
        width, height = _image_size(image_path)
    boxes: List[List[float]] = []
    labels: List[str] = []
    difficult: List[bool] = []
    objects = tree.findall("object")
    for k, obj in enumerate(objects):
        owhere = f"{where} object {k}"
        diff_node = obj.find("difficult")
        is_difficult = diff_node is not None and (diff_node.text or "0").strip() == "1"
        if is_difficult and not include_difficult:
            continue
        bb = obj.find("bndbox")
        if bb is None:
            raise DatasetError(f"{owhere}: missing <bndbox>; fix the annotation file or pass --skip_bad")
        xmin, ymin, xmax, ymax = (_number(bb, t, owhere) for t in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([xmin - 1.0, ymin - 1.0, xmax, ymax])
        labels.append(_text(obj, "name", owhere))
        difficult.append(is_difficult)
    if not boxes:
        what = "no <object>" if not objects else "only difficult objects"
        raise DatasetError(f"{where} has {what}; CorLoc needs at least one box: remove it from the set or "
                           "pass --skip_bad")
    arr = check_boxes(np.asarray(boxes), width, height, where)
    return AnnotatedImage(name=image_id, image_path=image_path, width=width, height=height, boxes=arr,
                          labels=tuple(labels), difficult=tuple(difficult))


def read_image_set(root: Path, image_set: str) -> Optional[List[str]]:
    """Ids listed in ``ImageSets/Main/<image_set>.txt`` (first column), or None when the file does not exist."""
    path = root / "ImageSets" / "Main" / f"{image_set}.txt"
    if not path.is_file():
        return None
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"VOC image set '{path}' is empty; pass another --set or fill it")
    return ids


def load_voc(root: Union[str, Path], image_set: str = "trainval", skip_bad: bool = False,
             include_difficult: bool = True, name: str = "voc") -> BoxDataset:
    """All annotated images of a VOC folder (``VOCdevkit/VOC2007`` or ``VOCdevkit/VOC2012``).

    Args:
        root: the folder holding ``JPEGImages``, ``Annotations`` and ``ImageSets``.
        image_set: ``ImageSets/Main/<image_set>.txt`` to use if present; otherwise every annotation file.
        skip_bad: skip (and list) bad items instead of raising.
        include_difficult: keep difficult boxes (the LOST/TokenCut default).
        name: the data set's name in the result.
    Returns:
        :class:`BoxDataset`.
    """
    root = Path(root)
    if not (root / "Annotations").is_dir():
        raise DatasetError(f"'{root}' has no Annotations/ folder; point --data_root at VOCdevkit/VOC2007 (or VOC2012)")
    ids = read_image_set(root, image_set)
    if ids is None:
        ids = sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
        if not ids:
            raise DatasetError(f"'{root / 'Annotations'}' holds no .xml files; check --data_root")
    out = BoxDataset(name=name)
    for image_id in ids:
        try:
            out.images.append(parse_voc_xml(root / "Annotations" / f"{image_id}.xml", root, include_difficult))
        except DatasetError as exc:
            if not skip_bad:
                raise
            out.skipped.append((image_id, str(exc)))
    return out
