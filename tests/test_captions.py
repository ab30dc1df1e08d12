import json

import h5py
import numpy as np
import pytest

from processing.captions import (
    build_caption_dataset,
    image_sizes_from_records,
    load_captions,
    load_coco_captions,
    load_karpathy_split,
    missing_image_ids,
)
from processing.feature_stores import FeatureStore, convert_feature_store


def sentence(raw):
    return {"raw": raw, "tokens": raw.lower().rstrip(".").split(), "imgid": 0, "sentid": 0}


def karpathy_image(cocoid, split, captions, folder="val2014"):
    return {
        "filepath": folder,
        "filename": f"COCO_{folder}_{cocoid:012d}.jpg",
        "imgid": cocoid % 100,
        "cocoid": cocoid,
        "split": split,
        "sentids": [0],
        "sentences": [sentence(raw) for raw in captions],
    }


@pytest.fixture
def karpathy_json(tmp_path):
    images = [
        karpathy_image(391895, "train", ["A man riding a bike.", "A cyclist on a road."], folder="train2014"),
        karpathy_image(522418, "restval", ["A woman cutting a cake."]),
        karpathy_image(184613, "val", ["A child holding an umbrella."]),
        karpathy_image(318219, "test", ["A computer on a desk."]),
    ]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def write_json(path, value):
    path.write_text(json.dumps(value))
    return path


def test_karpathy_train_includes_restval(karpathy_json):
    records = load_karpathy_split(karpathy_json, "train")
    assert [r["image_id"] for r in records] == ["391895", "522418"]
    first = records[0]
    assert first["file_name"] == "train2014/COCO_train2014_000000391895.jpg"
    assert first["captions"] == ["A man riding a bike.", "A cyclist on a road."]
    assert first["tokens"] == [["a", "man", "riding", "a", "bike"], ["a", "cyclist", "on", "a", "road"]]
    assert first["split"] == "train" and records[1]["split"] == "restval"
    assert [r["image_id"] for r in load_karpathy_split(karpathy_json, "train", restval_into_train=False)] == ["391895"]


def test_karpathy_other_splits(karpathy_json):
    assert [r["image_id"] for r in load_karpathy_split(karpathy_json, "test")] == ["318219"]
    assert [r["image_id"] for r in load_karpathy_split(karpathy_json, "val")] == ["184613"]
    assert len(load_karpathy_split(karpathy_json, "all")) == 4
    assert [r["image_id"] for r in load_karpathy_split(karpathy_json, ["val", "test"])] == ["184613", "318219"]
    by_imgid = load_karpathy_split(karpathy_json, "test", id_key="imgid")
    assert by_imgid[0]["image_id"] == "19"


def test_karpathy_unknown_split(karpathy_json):
    with pytest.raises(ValueError, match="unknown split 'validation'.*'restval'"):
        load_karpathy_split(karpathy_json, "validation")


def test_flickr_style_file(tmp_path):
    image = {"filename": "1000092795.jpg", "imgid": 0, "split": "test",
             "sentences": [{"raw": "Two young guys with shaggy hair look at their hands!"}]}
    path = write_json(tmp_path / "dataset_flickr30k.json", {"images": [image], "dataset": "flickr30k"})
    record = load_karpathy_split(path, "test")[0]
    assert record["image_id"] == "1000092795" and record["file_name"] == "1000092795.jpg"
    # no tokens in the file: the tokenizer's rule makes them
    assert record["tokens"] == [["two", "young", "guys", "with", "shaggy", "hair", "look", "at", "their", "hands"]]


def test_explicit_image_id_key_wins(tmp_path):
    """The generated quick-start data carries image_id next to cocoid; its attributes are keyed by image_id."""
    image = dict(karpathy_image(5, "train", ["A red square."]), image_id="scene_00005", width=96, height=96)
    records = load_karpathy_split(write_json(tmp_path / "q.json", {"images": [image]}))
    assert records[0]["image_id"] == "scene_00005"
    assert image_sizes_from_records(records) == {"scene_00005": (96, 96)}


def test_missing_file_and_bad_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.json does not exist"):
        load_karpathy_split(tmp_path / "nowhere.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        load_karpathy_split(broken)
    with pytest.raises(ValueError, match="the top level has no 'images' key"):
        load_karpathy_split(write_json(tmp_path / "a.json", {"dataset": "coco"}))
    image = karpathy_image(1, "train", ["x"])
    del image["sentences"]
    images = [karpathy_image(2, "train", ["y"]), image]
    with pytest.raises(ValueError, match=r"images\[1\] has no 'sentences' key"):
        load_karpathy_split(write_json(tmp_path / "b.json", {"images": images}))
    image = karpathy_image(1, "train", ["x"])
    del image["split"]
    with pytest.raises(ValueError, match=r"images\[0\] has no 'split' key"):
        load_karpathy_split(write_json(tmp_path / "c.json", {"images": [image]}))
    image = karpathy_image(1, "train", ["x"])
    image["sentences"] = [{"tokens": ["x"]}]
    with pytest.raises(ValueError, match=r"images\[0\]\['sentences'\]\[0\] has no 'raw' key"):
        load_karpathy_split(write_json(tmp_path / "d.json", {"images": [image]}))
    twice = [karpathy_image(1, "train", ["x"]), karpathy_image(1, "train", ["y"])]
    with pytest.raises(ValueError, match="image id '1' occurs twice"):
        load_karpathy_split(write_json(tmp_path / "e.json", {"images": twice}))


@pytest.fixture
def coco_json(tmp_path):
    value = {
        "images": [
            {"id": 391895, "file_name": "COCO_val2014_000000391895.jpg", "width": 640, "height": 360},
            {"id": 522418, "file_name": "COCO_val2014_000000522418.jpg", "width": 640, "height": 480},
            {"id": 999, "file_name": "COCO_val2014_000000000999.jpg", "width": 500, "height": 500},
        ],
        "annotations": [
            {"image_id": 391895, "id": 1, "caption": "A man with a red helmet on a small moped on a dirt road. "},
            {"image_id": 522418, "id": 2, "caption": "A woman wearing a net on her head cutting a cake."},
            {"image_id": 391895, "id": 3, "caption": "Man riding a motor bike on a dirt road on the countryside."},
        ],
    }
    return write_json(tmp_path / "captions_val2014.json", value)


def test_coco_captions(coco_json):
    records = load_coco_captions(coco_json)
    assert [r["image_id"] for r in records] == ["391895", "522418"]  # 999 has no caption
    first = records[0]
    assert first["file_name"] == "COCO_val2014_000000391895.jpg"
    assert first["captions"] == ["A man with a red helmet on a small moped on a dirt road.",
                                 "Man riding a motor bike on a dirt road on the countryside."]
    assert first["tokens"][1][:4] == ["man", "riding", "a", "motor"]
    assert (first["width"], first["height"]) == (640, 360)
    assert load_captions(coco_json) == records  # told apart by its keys


def test_coco_errors(tmp_path, coco_json):
    value = json.loads(coco_json.read_text())
    del value["annotations"]
    with pytest.raises(ValueError, match="the top level has no 'annotations' key"):
        load_coco_captions(write_json(tmp_path / "a.json", value))
    value = json.loads(coco_json.read_text())
    del value["annotations"][1]["caption"]
    with pytest.raises(ValueError, match=r"annotations\[1\] has no 'caption' key"):
        load_coco_captions(write_json(tmp_path / "b.json", value))
    value = json.loads(coco_json.read_text())
    value["annotations"].append({"image_id": 12345, "caption": "A ghost."})
    with pytest.raises(ValueError, match="not in 'images': '12345'"):
        load_coco_captions(write_json(tmp_path / "c.json", value))


def test_load_captions_detects_karpathy(karpathy_json):
    assert [r["image_id"] for r in load_captions(karpathy_json, split="val")] == ["184613"]


@pytest.fixture
def store(tmp_path):
    """A feature store (HDF5 source without image sizes) holding 391895 and 184613 only."""
    path = tmp_path / "detections.hdf5"
    with h5py.File(path, "w") as handle:
        for image_id in (391895, 184613):
            handle[f"{image_id}_features"] = np.ones((4, 8), np.float32) * image_id
            handle[f"{image_id}_boxes"] = np.array([[0, 0, 320, 180]] * 4, np.float32)
    return path


def test_coco_sizes_normalise_store_boxes(tmp_path, store, coco_json):
    sizes = image_sizes_from_records(load_coco_captions(coco_json))
    out = convert_feature_store(store, tmp_path / "features", image_sizes=sizes, progress=False)
    np.testing.assert_allclose(FeatureStore(out)["391895"]["region_boxes"][0], [0, 0, 0.5, 0.5])
    assert FeatureStore(out)["184613"]["region_boxes"] is None  # its size is not in the caption file


def test_pairing_with_a_feature_store(tmp_path, store, karpathy_json):
    features = FeatureStore(convert_feature_store(store, tmp_path / "features", progress=False))
    records = load_karpathy_split(karpathy_json, "all")
    assert missing_image_ids(records, features) == ["522418", "318219"]
    with pytest.raises(ValueError, match="2 image.*no region features.*'522418', '318219'.*on_missing='skip'"):
        build_caption_dataset(records, features)
    with pytest.warns(UserWarning, match="2 image"):
        dataset = build_caption_dataset(records, features, on_missing="skip")
    assert dataset["image_id"] == ["391895", "184613"]
    assert dataset[0]["captions"] == ["A man riding a bike.", "A cyclist on a road."]
    assert dataset[0]["tokens"][1] == ["a", "cyclist", "on", "a", "road"]
    for row in dataset:
        assert features.dataset[row["feature_index"]]["image_id"] == row["image_id"]
    per_caption = build_caption_dataset(records[:1], features, one_row_per_caption=True)
    assert per_caption["caption"] == ["A man riding a bike.", "A cyclist on a road."]
    assert per_caption["image_id"] == ["391895", "391895"] and per_caption["tokens"][0][-1] == "bike"


def test_pairing_with_a_set_of_ids_and_errors(karpathy_json):
    records = load_karpathy_split(karpathy_json, "test")
    dataset = build_caption_dataset(records, {"318219"})
    assert dataset.column_names == ["image_id", "file_name", "captions", "tokens"]
    with pytest.raises(ValueError, match="no image has both captions and region features"), pytest.warns(UserWarning):
        build_caption_dataset(records, set(), on_missing="skip")
    with pytest.raises(ValueError, match="on_missing must be"):
        build_caption_dataset(records, {"318219"}, on_missing="ignore")
    with pytest.raises(ValueError, match=r"records\[0\] has no 'captions' key"):
        build_caption_dataset([{"image_id": "1", "file_name": "x", "tokens": []}], {"1"})
