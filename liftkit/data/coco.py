"""COCO instance annotations (any COCO-format JSON) and the COCO20k subset, as :class:`BoxDataset`.

* ``load_coco(annotations, image_dir)``: every image of the JSON (``--dataset coco``).
* ``load_coco(annotations, image_dir, names=read_coco20k_list(path))``: COCO20k (``--dataset coco20k``), the 19,817
  COCO *train2014* images of LOST / TokenCut, listed as ``train2014/COCO_train2014_000000XXXXXX.jpg``.

COCO 2017 reuses the 2014 images under new names: ``COCO_train2014_000000XXXXXX.jpg`` is ``000000XXXXXX.jpg`` in
``train2017/`` and the 12 digits are the image id in both years' JSONs (:func:`coco2014_to_2017_name`). COCO20k
therefore works with either ``instances_train2014.json`` or ``instances_train2017.json`` and either image folder:
images are matched by id, and the file is looked up under both names.

Boxes: ``[x, y, w, h]`` becomes ``(x, y, x + w, y + h)`` rounded to integers, and ``iscrowd`` boxes are dropped,
both as in LOST's ``extract_gt_COCO``.

Bad items (an id the JSON does not know, a missing image file, an image with no non-crowd box, a box outside the
image) raise one :class:`DatasetError`, or are skipped and listed in ``BoxDataset.skipped`` with ``skip_bad=True``.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from liftkit.errors import DatasetError
from liftkit.data.boxes import AnnotatedImage, BoxDataset, annotation_number, check_boxes

COCO20K_SIZE = 19817
_COCO2014 = re.compile(r"^(?:.*/)?COCO_(train|val)2014_(\d{12})\.jpg$")
_COCO2017 = re.compile(r"^(?:.*/)?(\d{12})\.jpg$")


def coco2014_to_2017_name(name: str) -> str:
    """``[train2014/]COCO_train2014_000000XXXXXX.jpg`` -> ``000000XXXXXX.jpg`` (the same image in train2017)."""
    m = _COCO2014.match(name.strip())
    if not m:
        raise DatasetError(f"'{name}' is not a COCO 2014 file name (COCO_train2014_<12 digits>.jpg); "
                           "check the --coco20k_list file")
    return f"{m.group(2)}.jpg"


def coco2017_to_2014_name(name: str, split: str = "train") -> str:
    """``000000XXXXXX.jpg`` -> ``COCO_<split>2014_000000XXXXXX.jpg``."""
    m = _COCO2017.match(name.strip())
    if not m:
        raise DatasetError(f"'{name}' is not a COCO 2017 file name (<12 digits>.jpg)")
    return f"COCO_{split}2014_{m.group(1)}.jpg"


def coco_image_id(name: str) -> int:
    """The image id in a 2014 or 2017 COCO file name (the 12 digits)."""
    m = _COCO2014.match(name.strip())
    if m:
        return int(m.group(2))
    m = _COCO2017.match(name.strip())
    if m:
        return int(m.group(1))
    raise DatasetError(f"'{name}' is not a COCO file name (COCO_train2014_<12 digits>.jpg or <12 digits>.jpg)")


def read_coco20k_list(path: Union[str, Path]) -> List[str]:
    """The COCO20k names (one ``train2014/COCO_train2014_XXXXXXXXXXXX.jpg`` a line), validated."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"COCO20k list '{path}' does not exist; pass --coco20k_list (coco_20k_filenames.txt)")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"COCO20k list '{path}' is empty; pass the coco_20k_filenames.txt of LOST/TokenCut")
    for k, n in enumerate(names):
        if not _COCO2014.match(n):
            raise DatasetError(f"COCO20k list '{path}' line {k + 1}: '{n}' is not a COCO_train2014_<12 digits>.jpg "
                               "name; pass the coco_20k_filenames.txt of LOST/TokenCut")
    return names


def read_coco_json(path: Union[str, Path]) -> dict:
    """Load and sanity-check a COCO instances JSON (``images`` and ``annotations`` lists)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"COCO annotations '{path}' do not exist; pass --annotations instances_<split>.json")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"COCO annotations '{path}' are not valid JSON ({exc}); re-download them") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise DatasetError(f"COCO annotations '{path}' lack the 'images'/'annotations' lists; pass a COCO "
                           "instances JSON")
    return data


def _find_image(image_dir: Path, file_name: str, image_id: int) -> Optional[Path]:
    """The image file of ``image_id``: the JSON's name, its 2017 name or its 2014 train/val name."""
    base = Path(file_name).name
    names = [file_name, base, f"{image_id:012d}.jpg", f"COCO_train2014_{image_id:012d}.jpg",
             f"COCO_val2014_{image_id:012d}.jpg"]
    for folder in (image_dir, image_dir / "train2017", image_dir / "train2014", image_dir / "val2014"):
        for n in names:
            p = folder / n
            if p.is_file():
                return p
    return None


def load_coco(annotations: Union[str, Path], image_dir: Union[str, Path], names: Optional[Sequence[str]] = None,
              skip_bad: bool = False, name: str = "coco") -> BoxDataset:
    """Images and non-crowd boxes of a COCO instances JSON.

    Args:
        annotations: instances JSON (``images`` with id/file_name/width/height, ``annotations`` with
            image_id/bbox/category_id/iscrowd).
        image_dir: folder holding the images (``train2017/``, ``train2014/`` or a COCO root holding either).
        names: restrict to these file names (2014 or 2017 style, matched by image id), in this order; None = every
            image of the JSON, in the JSON's order.
        skip_bad: skip (and list) bad items instead of raising.
        name: the data set's name in the result.
    Returns:
        :class:`BoxDataset`.
    """
    ann_path = Path(annotations)
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise DatasetError(f"COCO image folder '{image_dir}' does not exist; check --data_root")
    data = read_coco_json(ann_path)
    out = BoxDataset(name=name)
    images: Dict[int, dict] = {}
    by_image: Dict[int, List[dict]] = defaultdict(list)
    for kind, records in (("image", data["images"]), ("annotation", data["annotations"])):
        for k, rec in enumerate(records):
            try:
                _index_record(ann_path, kind, k, rec, images, by_image)
            except DatasetError as exc:
                if not skip_bad:
                    raise
                out.skipped.append((f"{kind} #{k}", str(exc)))

    if names is None:
        wanted = [(str(images[i].get("file_name", i)), i) for i in images]
    else:
        wanted = [(n, coco_image_id(n)) for n in names]

    for item, image_id in wanted:
        try:
            out.images.append(_one_image(ann_path, image_dir, images, by_image, item, image_id))
        except DatasetError as exc:
            if not skip_bad:
                raise
            out.skipped.append((item, str(exc)))
    return out


_ID = dict(integer=True, minimum=0, maximum=2 ** 53, text_ok=False)


def _index_record(ann_path: Path, kind: str, k: int, rec, images: Dict[int, dict],
                  by_image: Dict[int, List[dict]]) -> None:
    """Validate one ``images`` / ``annotations`` record's id fields and index it (DatasetError naming it)."""
    where = f"COCO annotations '{ann_path}' {kind} #{k}"
    if not isinstance(rec, dict):
        raise DatasetError(f"{where} is {type(rec).__name__} {repr(rec)[:40]}, not an object; fix the annotations "
                           "or pass --skip_bad")
    if kind == "image":
        images[annotation_number(rec.get("id"), where, "'id'", **_ID)] = rec
        return
    for key in ("image_id", "bbox"):
        if key not in rec:
            raise DatasetError(f"{where} (id {str(rec.get('id', '?'))[:20]}) lacks '{key}'; fix the annotations or "
                               "pass --skip_bad")
    by_image[annotation_number(rec["image_id"], where, "'image_id'", **_ID)].append(rec)


def _one_image(ann_path: Path, image_dir: Path, images: Dict[int, dict], by_image: Dict[int, List[dict]],
               item: str, image_id: int) -> AnnotatedImage:
    if image_id not in images:
        raise DatasetError(f"COCO image '{item}' (id {image_id}) is not in '{ann_path}'; pass the instances JSON "
                           "that covers it or --skip_bad")
    im = images[image_id]
    file_name = str(im.get("file_name", f"{image_id:012d}.jpg"))
    where = f"COCO image id {image_id} ('{file_name}') in '{ann_path}'"
    if "width" not in im or "height" not in im:
        raise DatasetError(f"{where}: missing width/height; fix the annotations")
    width, height = (annotation_number(im[k], where, f"'{k}'", integer=True, minimum=1, maximum=1e6, text_ok=False)
                     for k in ("width", "height"))
    path = _find_image(image_dir, file_name, image_id)
    if path is None:
        raise DatasetError(f"{where}: image file not found under '{image_dir}' (as {file_name} or "
                           f"COCO_train2014_{image_id:012d}.jpg); check --data_root or pass --skip_bad")
    boxes, labels = [], []
    for a in by_image.get(image_id, []):
        if a.get("iscrowd", 0) == 1:
            continue
        awhere = f"{where} annotation {str(a.get('id', '?'))[:20]}"
        bbox = a["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DatasetError(f"{awhere}: 'bbox' is {str(bbox)[:40]!r}, not [x, y, w, h]; fix the annotations or "
                               "pass --skip_bad")
        x, y = (annotation_number(v, awhere, f"'bbox[{i}]'", text_ok=False) for i, v in enumerate(bbox[:2]))
        w, h = (annotation_number(v, awhere, f"'bbox[{i + 2}]'", minimum=0, text_ok=False)
                for i, v in enumerate(bbox[2:]))
        boxes.append([int(round(v)) for v in (x, y, x + w, y + h)])
        labels.append(str(a.get("category_id", "")))
    if not boxes:
        raise DatasetError(f"{where} has no non-crowd box; CorLoc needs one: pass --skip_bad")
    arr = check_boxes(np.asarray(boxes, dtype=np.float64), width, height, where)
    return AnnotatedImage(name=Path(file_name).stem, image_path=path, width=width, height=height, boxes=arr,
                          labels=tuple(labels), difficult=(False,) * len(labels))
