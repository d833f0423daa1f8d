"""VOC XML and COCO JSON loading on the real subsets (exact counts and boxes), the COCO20k 2014 -> 2017 name mapping,
and bad inputs (one clear error, or skipped and counted with skip_bad)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from liftkit.data.coco import (COCO20K_SIZE, coco2014_to_2017_name, coco2017_to_2014_name, coco_image_id, load_coco,
                               read_coco20k_list)
from liftkit.data.voc import load_voc, parse_voc_xml
from liftkit.errors import DatasetError

VOC07 = Path("VOC2007/VOCdevkit/VOC2007")
VOC12 = Path("VOC2012/VOCdevkit/VOC2012")
COCO_JSON = Path("COCO/annotations/instances_train2017.json")
COCO_IMAGES = Path("COCO/train2017")
COCO20K = Path("COCO/coco_20k_filenames.txt")
COCO20K_HERE = ["000000090122", "000000116740", "000000163840", "000000221184", "000000229378", "000000278528",
                "000000319492", "000000354306", "000000360461", "000000401416", "000000425988"]


# ------------------------------------------------------------------------------------------------ VOC, real data
def test_voc07_every_annotated_image(shared_data):
    ds = load_voc(shared_data / VOC07, image_set="no_such_set")  # no list file: every Annotations/*.xml
    assert len(ds.images) == 13
    assert ds.num_objects == 41
    assert sum(sum(im.difficult) for im in ds.images) == 6
    assert [im.name for im in ds.images][:3] == ["000001", "000002", "000003"]
    assert not ds.skipped and ds.has_ground_truth


def test_voc07_trainval_and_test_splits(shared_data):
    tv = load_voc(shared_data / VOC07, "trainval")
    assert [im.name for im in tv.images] == ["000005", "000007", "000009", "000032", "000033", "000039"]
    assert tv.num_objects == 18
    test = load_voc(shared_data / VOC07, "test")
    assert len(test.images) == 7 and test.num_objects == 23


def test_voc07_boxes_are_shifted_to_continuous_coordinates(shared_data):
    im = parse_voc_xml(shared_data / VOC07 / "Annotations" / "000001.xml")
    assert (im.width, im.height) == (353, 500)
    assert im.labels == ("dog", "person")
    # <xmin>48 <ymin>240 <xmax>195 <ymax>371 -> (47, 239, 195, 371)
    np.testing.assert_array_equal(im.boxes, [[47, 239, 195, 371], [7, 11, 352, 498]])
    assert im.image_path == shared_data / VOC07 / "JPEGImages" / "000001.jpg"


def test_voc_difficult_boxes_kept_by_default(shared_data):
    ds = load_voc(shared_data / VOC07, "trainval")
    assert ds.num_objects == 18
    no_diff = load_voc(shared_data / VOC07, "trainval", include_difficult=False)
    assert no_diff.num_objects == 18 - 2  # of the two images with difficult boxes only 000005 (2 of them) is here
    five = [im for im in ds.images if im.name == "000005"][0]
    assert sum(five.difficult) == 2 and len(five.boxes) == 5


def test_voc12_subset(shared_data):
    ds = load_voc(shared_data / VOC12, "trainval")
    assert len(ds.images) == 11
    assert ds.num_objects == 24
    assert sum(lab == "person" for im in ds.images for lab in im.labels) == 13
    assert sum(sum(im.difficult) for im in ds.images) == 1


# ------------------------------------------------------------------------------------------------ COCO, real data
def test_coco_every_image_of_the_json(shared_data):
    ds = load_coco(shared_data / COCO_JSON, shared_data / COCO_IMAGES)
    assert len(ds.images) == 80
    assert ds.num_objects == 705 - 6  # 6 iscrowd boxes are dropped
    im = [i for i in ds.images if i.name == "000000262145"][0]
    assert (im.width, im.height) == (640, 427)
    # bbox [212.6, 55.62, 53.04, 53.46] -> rounded (213, 56, 266, 109)
    assert any(np.array_equal(b, [213, 56, 266, 109]) for b in im.boxes)
    assert im.image_path == shared_data / COCO_IMAGES / "000000262145.jpg"


def test_coco20k_list_and_subset(shared_data):
    names = read_coco20k_list(shared_data / COCO20K)
    assert len(names) == COCO20K_SIZE == 19817
    assert names[0] == "train2014/COCO_train2014_000000560992.jpg"
    ds = load_coco(shared_data / COCO_JSON, shared_data / COCO_IMAGES, names=names, skip_bad=True, name="coco20k")
    assert sorted(im.name for im in ds.images) == COCO20K_HERE
    assert ds.num_objects == 122
    assert len(ds.skipped) == 19817 - 11
    assert ds.skipped[0][0] == "train2014/COCO_train2014_000000560992.jpg"
    assert "560992" in ds.skipped[0][1]
    # the images are found under their 2017 names
    for im in ds.images:
        assert im.image_path.name == f"{im.name}.jpg" and im.image_path.is_file()
    with pytest.raises(DatasetError, match=r"id 560992.*--skip_bad"):
        load_coco(shared_data / COCO_JSON, shared_data / COCO_IMAGES, names=names)


def test_coco20k_names_map_to_existing_train2017_files(shared_data):
    names = read_coco20k_list(shared_data / COCO20K)
    present = {p.name for p in (shared_data / COCO_IMAGES).iterdir()}
    mapped = [coco2014_to_2017_name(n) for n in names]
    assert sorted(m[:-4] for m in mapped if m in present) == COCO20K_HERE


def test_coco_name_mapping():
    assert coco2014_to_2017_name("train2014/COCO_train2014_000000560992.jpg") == "000000560992.jpg"
    assert coco2014_to_2017_name("COCO_train2014_000000000009.jpg") == "000000000009.jpg"
    assert coco2014_to_2017_name("COCO_val2014_000000000042.jpg") == "000000000042.jpg"
    assert coco2017_to_2014_name("000000560992.jpg") == "COCO_train2014_000000560992.jpg"
    assert coco2017_to_2014_name("000000000042.jpg", "val") == "COCO_val2014_000000000042.jpg"
    assert coco_image_id("train2014/COCO_train2014_000000560992.jpg") == 560992
    assert coco_image_id("000000000139.jpg") == 139
    for bad in ("COCO_train2014_12345.jpg", "000000560992.jpg", "COCO_train2017_000000560992.jpg"):
        with pytest.raises(DatasetError, match="not a COCO 2014 file name"):
            coco2014_to_2017_name(bad)
    with pytest.raises(DatasetError, match="not a COCO file name"):
        coco_image_id("cat.jpg")


# ------------------------------------------------------------------------------------------------ bad VOC input
def _voc_xml(objects: str, width: int = 100, height: int = 80, filename: str = "a.jpg") -> str:
    return (f"<annotation><filename>{filename}</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{objects}</annotation>")


def _obj(x1, y1, x2, y2, name="cat", difficult=0) -> str:
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
            f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")


@pytest.fixture
def voc_root(tmp_path):
    """A tiny VOC folder: a (good), b (no objects), c (box outside), d (listed, no XML), e (XML, no image)."""
    root = tmp_path / "VOC"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    for n in "abc":
        Image.new("RGB", (100, 80), (120, 30, 200)).save(root / "JPEGImages" / f"{n}.jpg")
    ann = root / "Annotations"
    ann.joinpath("a.xml").write_text(_voc_xml(_obj(1, 1, 101, 80) + _obj(10, 20, 30, 40, "dog", 1)))
    ann.joinpath("b.xml").write_text(_voc_xml("", filename="b.jpg"))
    ann.joinpath("c.xml").write_text(_voc_xml(_obj(10, 10, 150, 40), filename="c.jpg"))
    ann.joinpath("e.xml").write_text(_voc_xml(_obj(10, 10, 20, 20), filename="e.jpg"))
    (root / "ImageSets/Main/trainval.txt").write_text("a\nb\nc\nd\ne\n")
    (root / "ImageSets/Main/good.txt").write_text("a\n")
    return root


def test_voc_good_item_and_border_tolerance(voc_root):
    ds = load_voc(voc_root, "good")
    (im,) = ds.images
    # xmax 101 on a 100-px image is 1 px over (the tolerance): clipped to 100
    np.testing.assert_array_equal(im.boxes, [[0, 0, 100, 80], [9, 19, 30, 40]])
    assert im.difficult == (False, True)


def test_voc_bad_items_are_errors(voc_root):
    ann = voc_root / "Annotations"
    with pytest.raises(DatasetError, match=r"b\.xml' has no <object>.*--skip_bad"):
        parse_voc_xml(ann / "b.xml")
    with pytest.raises(DatasetError, match=r"c\.xml'.*outside the 100x80 image"):
        parse_voc_xml(ann / "c.xml")
    with pytest.raises(DatasetError, match=r"d\.xml' is missing"):
        parse_voc_xml(ann / "d.xml")
    with pytest.raises(DatasetError, match=r"image '.*e\.jpg' is missing"):
        parse_voc_xml(ann / "e.xml")
    with pytest.raises(DatasetError, match="b.xml"):
        load_voc(voc_root, "trainval")  # the first bad item stops the load


def test_voc_skip_bad_counts(voc_root):
    ds = load_voc(voc_root, "trainval", skip_bad=True)
    assert [im.name for im in ds.images] == ["a"]
    assert [name for name, _ in ds.skipped] == ["b", "c", "d", "e"]
    assert all(reason and "\n" not in reason for _, reason in ds.skipped)


def test_voc_broken_xml_and_layout(voc_root, tmp_path):
    (voc_root / "Annotations" / "a.xml").write_text("<annotation><size>")
    with pytest.raises(DatasetError, match="not valid XML"):
        load_voc(voc_root, "good")
    (voc_root / "Annotations" / "a.xml").write_text(_voc_xml(_obj(5, 5, "x", 9)))
    with pytest.raises(DatasetError, match="<xmax> is 'x', not a number"):
        load_voc(voc_root, "good")
    with pytest.raises(DatasetError, match="no Annotations/ folder"):
        load_voc(tmp_path)


# ------------------------------------------------------------------------------------------------ bad COCO input
@pytest.fixture
def coco_files(tmp_path):
    """A COCO JSON with images 1 (good), 2 (crowd only), 3 (box outside), 4 (no file), 5 (no annotation)."""
    img_dir = tmp_path / "train2017"
    img_dir.mkdir()
    for i in (1, 2, 3, 5):
        Image.new("RGB", (64, 48)).save(img_dir / f"{i:012d}.jpg")
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 64, "height": 48} for i in (1, 2, 3, 4, 5)]
    anns = [
        {"id": 10, "image_id": 1, "bbox": [1.4, 2.6, 10.0, 20.0], "category_id": 3, "iscrowd": 0},
        {"id": 11, "image_id": 1, "bbox": [0, 0, 64, 48], "category_id": 1, "iscrowd": 1},
        {"id": 12, "image_id": 2, "bbox": [0, 0, 10, 10], "category_id": 1, "iscrowd": 1},
        {"id": 13, "image_id": 3, "bbox": [50, 10, 40, 10], "category_id": 1, "iscrowd": 0},
        {"id": 14, "image_id": 4, "bbox": [0, 0, 10, 10], "category_id": 1, "iscrowd": 0},
    ]
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": []}))
    return ann, img_dir


def test_coco_bad_items(coco_files):
    ann, img_dir = coco_files
    ds = load_coco(ann, img_dir, names=["COCO_train2014_000000000001.jpg"])
    (im,) = ds.images
    np.testing.assert_array_equal(im.boxes, [[1, 3, 11, 23]])  # crowd box dropped, rounded x1y1x2y2
    assert im.labels == ("3",)
    with pytest.raises(DatasetError, match="id 2.*no non-crowd box"):
        load_coco(ann, img_dir, names=["000000000002.jpg"])
    with pytest.raises(DatasetError, match="id 3.*outside the 64x48 image"):
        load_coco(ann, img_dir, names=["000000000003.jpg"])
    with pytest.raises(DatasetError, match="id 4.*image file not found"):
        load_coco(ann, img_dir, names=["000000000004.jpg"])
    with pytest.raises(DatasetError, match=r"id 99\) is not in"):
        load_coco(ann, img_dir, names=["COCO_train2014_000000000099.jpg"])
    ds = load_coco(ann, img_dir, skip_bad=True)
    assert [im.name for im in ds.images] == ["000000000001"]
    assert [item for item, _ in ds.skipped] == [f"{i:012d}.jpg" for i in (2, 3, 4, 5)]


def test_coco_bad_files(coco_files, tmp_path):
    ann, img_dir = coco_files
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_coco(bad, img_dir)
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(DatasetError, match="lack the 'images'/'annotations' lists"):
        load_coco(bad, img_dir)
    with pytest.raises(DatasetError, match="do not exist"):
        load_coco(tmp_path / "missing.json", img_dir)
    with pytest.raises(DatasetError, match="image folder"):
        load_coco(ann, tmp_path / "nowhere")
    lst = tmp_path / "list.txt"
    lst.write_text("train2014/COCO_train2014_000000000001.jpg\nfoo.jpg\n")
    with pytest.raises(DatasetError, match="line 2: 'foo.jpg'"):
        read_coco20k_list(lst)
