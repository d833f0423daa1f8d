"""Hostile annotation values (issue #14, class 3): VOC XML and COCO JSON with NaN, 1e999, negative, non-numeric,
non-object records and string ids. Each is one DatasetError naming file, record and field (never a
ValueError/TypeError/OverflowError), and ``skip_bad`` skips and counts it while the good items load."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from liftkit.data.boxes import annotation_number
from liftkit.data.coco import load_coco
from liftkit.data.voc import load_voc
from liftkit.errors import DatasetError

VOC_XML = """<annotation><filename>{id}.jpg</filename>
<size><width>{w}</width><height>{h}</height><depth>3</depth></size>
<object><name>cat</name><difficult>0</difficult>
<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object></annotation>"""
GOOD = dict(w="64", h="48", x1="5", y1="6", x2="30", y2="40")

VOC_CASES = {
    "width_nan": (dict(w="nan"), "<width> is 'nan', not a finite number"),
    "width_inf": (dict(w="1e999"), "<width> is '1e999', not a finite number"),
    "width_negative": (dict(w="-64"), "<width> is -64, below 0"),
    "width_text": (dict(w="wide"), "<width> is 'wide', not a number"),
    "width_fraction": (dict(h="47.5"), "<height> is '47.5', not a whole number"),
    "width_huge": (dict(w="1e12"), "<width> is 1e+12, beyond 1e+06"),
    "xmin_nan": (dict(x1="nan"), "<xmin> is 'nan', not a finite number"),
    "xmax_inf": (dict(x2="1e999"), "<xmax> is '1e999', not a finite number"),
    "ymin_text": (dict(y1="top"), "<ymin> is 'top', not a number"),
    "box_negative": (dict(x1="-500"), "lies outside the 64x48 image"),
    "box_inverted": (dict(x1="40", x2="10"), "x2 < x1"),
    "ymax_empty": (dict(y2=" "), "missing <ymax>"),
}


def _voc(root, cases):
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for image_id, fields in cases.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(VOC_XML.format(id=image_id, **{**GOOD, **fields}))
        Image.new("RGB", (64, 48)).save(root / "JPEGImages" / f"{image_id}.jpg")
    return root


@pytest.mark.parametrize("case", sorted(VOC_CASES))
def test_voc_bad_value_one_line_naming_file_and_field(case, tmp_path):
    fields, message = VOC_CASES[case]
    root = _voc(tmp_path / "voc", {"good": {}, case: fields})
    with pytest.raises(DatasetError) as info:
        load_voc(root)
    text = str(info.value)
    assert "\n" not in text and f"{case}.xml" in text and message in text, text
    ds = load_voc(root, skip_bad=True)
    assert [im.name for im in ds.images] == ["good"] and [k for k, _ in ds.skipped] == [case]
    np.testing.assert_array_equal(ds.images[0].boxes, [[4, 5, 30, 40]])


COCO_IMAGE = {"id": 1, "file_name": "000000000001.jpg", "width": 64, "height": 48}
COCO_ANN = {"id": 10, "image_id": 1, "bbox": [5, 6, 20, 30], "category_id": 3, "iscrowd": 0}

COCO_CASES = {  # name -> (images, annotations, message, skipped item)
    "annotation_is_number": ([COCO_IMAGE], [COCO_ANN, 7], "annotation #1 is int 7, not an object", "annotation #1"),
    "annotation_is_string": ([COCO_IMAGE], [COCO_ANN, "bbox"], "annotation #1 is str 'bbox', not an object",
                             "annotation #1"),
    "annotation_is_list": ([COCO_IMAGE], [COCO_ANN, [1, 2]], "annotation #1 is list [1, 2]", "annotation #1"),
    "image_is_null": ([COCO_IMAGE, None], [COCO_ANN], "image #1 is NoneType", "image #1"),
    "image_id_string": ([COCO_IMAGE, {**COCO_IMAGE, "id": "2"}], [COCO_ANN], "image #1: 'id' is str '2', not a "
                        "number", "image #1"),
    "annotation_image_id_string": ([COCO_IMAGE], [COCO_ANN, {**COCO_ANN, "image_id": "one"}],
                                   "annotation #1: 'image_id' is str 'one'", "annotation #1"),
    "annotation_image_id_float": ([COCO_IMAGE], [COCO_ANN, {**COCO_ANN, "image_id": 1.5}],
                                  "'image_id' is '1.5', not a whole number", "annotation #1"),
    "annotation_lacks_bbox": ([COCO_IMAGE], [COCO_ANN, {"id": 11, "image_id": 1}], "lacks 'bbox'", "annotation #1"),
    "bbox_nan": ([COCO_IMAGE, {**COCO_IMAGE, "id": 2}], [COCO_ANN, {**COCO_ANN, "image_id": 2,
                 "bbox": [float("nan"), 1, 2, 3]}], "'bbox[0]' is 'nan', not a finite number", "000000000001.jpg"),
    "bbox_inf": ([COCO_IMAGE, {**COCO_IMAGE, "id": 2}], [COCO_ANN, {**COCO_ANN, "image_id": 2,
                 "bbox": [1, 1, float("inf"), 3]}], "'bbox[2]' is 'inf', not a finite number", "000000000001.jpg"),
    "bbox_negative_size": ([COCO_IMAGE, {**COCO_IMAGE, "id": 2}], [COCO_ANN, {**COCO_ANN, "image_id": 2,
                           "bbox": [1, 1, -4, 3]}], "'bbox[2]' is -4, below 0", "000000000001.jpg"),
    "bbox_text": ([COCO_IMAGE, {**COCO_IMAGE, "id": 2}], [COCO_ANN, {**COCO_ANN, "image_id": 2,
                  "bbox": [1, "a", 2, 3]}], "'bbox[1]' is str 'a'", "000000000001.jpg"),
    "bbox_short": ([COCO_IMAGE, {**COCO_IMAGE, "id": 2}], [COCO_ANN, {**COCO_ANN, "image_id": 2, "bbox": [1, 2]}],
                   "'bbox' is '[1, 2]', not [x, y, w, h]", "000000000001.jpg"),
    "bbox_dict": ([COCO_IMAGE, {**COCO_IMAGE, "id": 2}], [COCO_ANN, {**COCO_ANN, "image_id": 2, "bbox": {"x": 1}}],
                  "not [x, y, w, h]", "000000000001.jpg"),
    "width_nan": ([COCO_IMAGE, {**COCO_IMAGE, "id": 2, "width": float("nan")}], [COCO_ANN, {**COCO_ANN, "image_id": 2}],
                  "'width' is 'nan', not a finite number", "000000000001.jpg"),
    "height_inf": ([COCO_IMAGE, {**COCO_IMAGE, "id": 2, "height": float("inf")}],
                   [COCO_ANN, {**COCO_ANN, "image_id": 2}], "'height' is 'inf'", "000000000001.jpg"),
    "width_negative": ([COCO_IMAGE, {**COCO_IMAGE, "id": 2, "width": -3}], [COCO_ANN, {**COCO_ANN, "image_id": 2}],
                       "'width' is -3, below 1", "000000000001.jpg"),
    "width_string": ([COCO_IMAGE, {**COCO_IMAGE, "id": 2, "width": "64"}], [COCO_ANN, {**COCO_ANN, "image_id": 2}],
                     "'width' is str '64'", "000000000001.jpg"),
}


@pytest.mark.parametrize("case", sorted(COCO_CASES))
def test_coco_bad_value_one_line_naming_file_record_and_field(case, tmp_path):
    images, anns, message, skipped = COCO_CASES[case]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in (1, 2):
        Image.new("RGB", (64, 48)).save(folder / f"{i:012d}.jpg")
    for im in images:  # the second image shares the first's file unless it has its own
        if isinstance(im, dict) and im.get("id") == 2:
            im["file_name"] = "000000000002.jpg"
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns}))  # NaN / Infinity as Python's json writes
    with pytest.raises(DatasetError) as info:
        load_coco(ann, folder)
    text = str(info.value)
    assert "\n" not in text and "instances.json" in text and message in text, text
    ds = load_coco(ann, folder, skip_bad=True)
    assert [im.name for im in ds.images] == ["000000000001"], ds.skipped
    assert len(ds.skipped) == 1 and message in ds.skipped[0][1]
    if skipped.startswith(("image #", "annotation #")):
        assert ds.skipped[0][0] == skipped
    np.testing.assert_array_equal(ds.images[0].boxes, [[5, 6, 25, 36]])


@pytest.mark.parametrize("value,kw,ok", [
    (3, {}, 3.0), ("4.5", {}, 4.5), (" 7 ", {"integer": True}, 7), (2.0, {"integer": True}, 2),
    (True, {}, None), ([1], {}, None), ("1e999", {}, None), (float("nan"), {}, None), (-1, {"minimum": 0}, None),
    ("5", {"text_ok": False}, None), (1e8, {}, None), (None, {}, None),
])
def test_annotation_number(value, kw, ok):
    if ok is None:
        with pytest.raises(DatasetError, match="f.xml record 3: <x> "):
            annotation_number(value, "f.xml record 3", "<x>", **kw)
    else:
        got = annotation_number(value, "f.xml record 3", "<x>", **kw)
        assert got == ok and type(got) is type(ok)
