import base64
import json

import h5py
import numpy as np
import pytest

from processing import feature_stores as fs
from processing.feature_stores import (
    FeatureRecordError,
    FeatureStore,
    FeatureStoreError,
    HDF5FeatureReader,
    NpzFeatureReader,
    TSVFeatureReader,
    convert_feature_store,
    iter_feature_records,
    load_feature_store,
    make_record,
    read_skipped_image_ids,
    write_synthetic_feature_store,
)

F = 8  # feature width of the tiny stores
SIZE = (640, 480)  # width, height of every tiny image


def arrays(image_id, feature_size=F):
    """Deterministic features (N, F) and pixel boxes (N, 4) of one image; N depends on the id."""
    rng = np.random.default_rng(int(image_id))
    num_regions = 3 + int(image_id) % 4
    features = rng.random((num_regions, feature_size), dtype=np.float32) * 10
    corners = rng.random((num_regions, 2), dtype=np.float32) * 300
    boxes = np.concatenate([corners, corners + 100], axis=1).astype(np.float32)
    return features, boxes


def normalised(boxes, size=SIZE):
    width, height = size
    return np.clip(boxes / np.array([width, height, width, height], dtype=np.float32), 0, 1)


def write_npz_dir(root, ids, npy=()):
    """self-critical layout: root/cocobu_att/<id>.npz (feat) and root/cocobu_box/<id>.npy."""
    att, box = root / "cocobu_att", root / "cocobu_box"
    att.mkdir(parents=True)
    box.mkdir()
    for image_id in ids:
        features, boxes = arrays(image_id)
        if image_id in npy:
            np.save(att / f"{image_id}.npy", features)
        else:
            np.savez_compressed(att / f"{image_id}.npz", feat=features)
        np.save(box / f"{image_id}.npy", boxes)
    return att


def tsv_line(image_id, features, boxes, size=SIZE):
    fields = [str(image_id), str(size[0]), str(size[1]), str(len(boxes)),
              base64.b64encode(boxes.astype(np.float32).tobytes()).decode(),
              base64.b64encode(features.astype(np.float32).tobytes()).decode()]
    return "\t".join(fields) + "\n"


def write_tsv(path, ids, feature_size=F):
    with open(path, "w") as handle:
        for image_id in ids:
            handle.write(tsv_line(image_id, *arrays(image_id, feature_size)))
    return path


def write_hdf5(path, ids, with_boxes=True):
    with h5py.File(path, "w") as handle:
        for image_id in ids:
            features, boxes = arrays(image_id)
            handle[f"{image_id}_features"] = features
            if with_boxes:
                handle[f"{image_id}_boxes"] = boxes
    return path


def convert(source, out, **kwargs):
    kwargs.setdefault("progress", False)
    return convert_feature_store(source, out, **kwargs)


def count_calls(monkeypatch, cls, name, fail_after=None):
    """Wrap cls.name to count its calls; raise RuntimeError (an interruption) on call fail_after + 1."""
    calls = {"n": 0}
    original = getattr(cls, name)

    def wrapper(self, *args, **kwargs):
        calls["n"] += 1
        if fail_after is not None and calls["n"] > fail_after:
            raise RuntimeError("simulated interruption")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, wrapper)
    return calls


IDS = ["9", "10", "42", "100", "7"]


def test_npz_directory_round_trip(tmp_path):
    att = write_npz_dir(tmp_path, IDS)
    out = convert(att, tmp_path / "store", image_sizes={int(i): SIZE for i in IDS})
    store = FeatureStore(out)
    assert store.image_ids == ["7", "9", "10", "42", "100"]  # numeric order
    assert store.feature_size == F and len(store) == 5
    for image_id in IDS:
        features, boxes = arrays(image_id)
        record = store[image_id]
        assert record["region_features"].dtype == np.float32
        np.testing.assert_array_equal(record["region_features"], features)
        np.testing.assert_allclose(record["region_boxes"], normalised(boxes), rtol=1e-6)
        np.testing.assert_array_equal(record["region_boxes_raw"], boxes)
        assert (record["image_width"], record["image_height"]) == SIZE
        assert record["num_regions"] == len(features)
    assert store.metadata["source_format"] == "npz" and store.metadata["num_with_normalized_boxes"] == 5


def test_npy_feature_files_and_unknown_size(tmp_path):
    att = write_npz_dir(tmp_path, IDS, npy={"10", "42"})
    store = FeatureStore(convert(att, tmp_path / "store"))
    features, boxes = arrays("42")
    np.testing.assert_array_equal(store["42"]["region_features"], features)
    # no image size anywhere: the boxes cannot be normalised, the pixel boxes are kept
    assert store["42"]["region_boxes"] is None
    np.testing.assert_array_equal(store["42"]["region_boxes_raw"], boxes)
    assert store["42"]["image_width"] is None
    assert store.metadata["num_with_normalized_boxes"] == 0


def test_npz_without_boxes(tmp_path):
    att = tmp_path / "feats"
    att.mkdir()
    for image_id in IDS:
        np.savez(att / f"{image_id}.npz", feat=arrays(image_id)[0])
    store = FeatureStore(convert(att, tmp_path / "store"))
    assert store["9"]["region_boxes"] is None and store["9"]["region_boxes_raw"] is None


def test_npz_keys_of_other_extractors(tmp_path):
    att = tmp_path / "feats"
    att.mkdir()
    features, boxes = arrays("3")
    np.savez(att / "3.npz", x=features, bbox=boxes, image_w=SIZE[0], image_h=SIZE[1])
    record = FeatureStore(convert(att, tmp_path / "store"))["3"]
    np.testing.assert_allclose(record["region_boxes"], normalised(boxes), rtol=1e-6)


def test_tsv_round_trip_with_fields_beyond_the_csv_limit(tmp_path):
    ids = ["391895", "522418", "184613"]
    path = tmp_path / "trainval.tsv"
    with open(path, "w") as handle:
        for image_id in ids:
            rng = np.random.default_rng(int(image_id))
            features = rng.random((20, 2048), dtype=np.float32)  # a 218k-character base64 field
            boxes = np.tile(np.array([[10, 20, 700, 400]], dtype=np.float32), (20, 1))
            handle.write(tsv_line(image_id, features, boxes))
    assert max(len(field) for field in path.read_text().split("\t")) > 131072
    store = FeatureStore(convert(path, tmp_path / "store"))
    assert store.image_ids == ids  # file order
    rng = np.random.default_rng(391895)
    np.testing.assert_array_equal(store["391895"]["region_features"], rng.random((20, 2048), dtype=np.float32))
    # 700 > width 640 is clipped to 1
    np.testing.assert_allclose(store[391895]["region_boxes"][0], [10 / 640, 20 / 480, 1.0, 400 / 480], rtol=1e-6)
    assert store.metadata["source_format"] == "tsv"


def test_tsv_several_files_and_image_id_filter(tmp_path):
    first = write_tsv(tmp_path / "f.tsv.0", ["1", "2", "3"])
    second = write_tsv(tmp_path / "f.tsv.1", ["4", "5"])
    store = FeatureStore(convert([first, second], tmp_path / "all", shard_size=2))
    assert store.image_ids == ["1", "2", "3", "4", "5"]
    np.testing.assert_array_equal(store["4"]["region_features"], arrays("4")[0])
    # a directory of TSV files, only some images
    some = FeatureStore(convert(tmp_path, tmp_path / "some", image_ids=[5, "2"]))
    assert sorted(some.image_ids) == ["2", "5"]


def test_hdf5_round_trip_with_and_without_sizes(tmp_path):
    path = write_hdf5(tmp_path / "coco_detections.hdf5", IDS)
    store = FeatureStore(convert(path, tmp_path / "no_size"))
    features, boxes = arrays("100")
    np.testing.assert_array_equal(store["100"]["region_features"], features)
    assert store["100"]["region_boxes"] is None
    np.testing.assert_array_equal(store["100"]["region_boxes_raw"], boxes)
    sized = FeatureStore(convert(path, tmp_path / "sized", image_sizes={i: SIZE for i in IDS}))
    np.testing.assert_allclose(sized["100"]["region_boxes"], normalised(boxes), rtol=1e-6)
    assert sized.image_ids == ["7", "9", "10", "42", "100"]


def test_format_detection(tmp_path):
    h5 = write_hdf5(tmp_path / "detections.bin", ["1"])  # told by its signature, not its name
    assert isinstance(fs.open_feature_reader(h5), HDF5FeatureReader)
    assert isinstance(fs.open_feature_reader(write_tsv(tmp_path / "x.tsv", ["1"])), TSVFeatureReader)
    assert isinstance(fs.open_feature_reader(write_npz_dir(tmp_path / "npz", ["1"])), NpzFeatureReader)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="cannot tell the feature format"):
        fs.open_feature_reader(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fs.open_feature_reader(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown feature store format"):
        fs.open_feature_reader(h5, format="lmdb")


def test_iter_feature_records(tmp_path):
    path = write_tsv(tmp_path / "x.tsv", ["5", "6"])
    records = list(iter_feature_records(path))
    assert [r["image_id"] for r in records] == ["5", "6"]
    np.testing.assert_array_equal(records[1]["region_features"], arrays("6")[0])
    np.testing.assert_allclose(records[1]["region_boxes"], normalised(arrays("6")[1]), rtol=1e-6)
    with open(path, "a") as handle:
        handle.write("7\t640\t480\t3\tnot-base64!\tAAAA\n")
    with pytest.raises(FeatureStoreError, match="image 7: boxes field is not valid base64"):
        list(iter_feature_records(path))


def test_float16_storage(tmp_path):
    att = tmp_path / "feats"
    att.mkdir()
    rng = np.random.default_rng(0)
    for image_id in range(4):
        np.savez(att / f"{image_id}.npz", feat=rng.random((36, 256), dtype=np.float32) * 10)
    convert(att, tmp_path / "f32")
    out16 = convert(att, tmp_path / "f16", dtype="float16")
    dataset = load_feature_store(out16)
    storage = dataset.data.schema.field("region_features").type.storage_type
    assert str(storage.value_type.value_type) == "halffloat"
    size = lambda p: sum(f.stat().st_size for f in p.glob("*.arrow"))  # noqa: E731
    assert size(tmp_path / "f16") < 0.6 * size(tmp_path / "f32")
    stored = np.load(att / "2.npz")["feat"]
    record = FeatureStore(out16)["2"]
    assert record["region_features"].dtype == np.float32  # read back as float32
    np.testing.assert_allclose(record["region_features"], stored, rtol=1e-3)
    assert not np.array_equal(record["region_features"], stored)  # it really was rounded


def test_float16_overflow_is_a_bad_record(tmp_path):
    att = tmp_path / "feats"
    att.mkdir()
    np.savez(att / "1.npz", feat=np.ones((2, F), np.float32))
    np.savez(att / "2.npz", feat=np.full((2, F), 1e6, np.float32))
    with pytest.raises(FeatureStoreError, match="2: region features overflow float16"):
        convert(att, tmp_path / "store", dtype="float16")


def corrupt_npz_dir(tmp_path):
    att = write_npz_dir(tmp_path, ["1", "2", "3", "4", "5", "6", "7"])
    (att / "2.npz").write_bytes(b"this is not a zip file")
    features, _ = arrays("3")
    features[0, 0] = np.nan
    np.savez(att / "3.npz", feat=features)
    np.savez(att / "5.npz", feat=np.ones(F, np.float32))  # 1-D: a pooled fc feature, not regions
    (tmp_path / "cocobu_box" / "6.npy").unlink()
    return att


def test_bad_files_are_reported_by_id(tmp_path):
    att = corrupt_npz_dir(tmp_path)
    with pytest.raises(FeatureStoreError) as error:
        convert(att, tmp_path / "store", image_ids=["1", "2", "3", "4", "5", "6", "7", "8"])
    assert sorted(error.value.bad_ids) == ["2", "3", "5", "6", "8"]
    message = str(error.value)
    assert "5 image(s)" in message and "on_error='skip'" in message
    assert "2: cannot read" in message
    assert "3: region features contain NaN or inf" in message
    assert "5: region features have shape (8,)" in message
    assert "6: no box file" in message
    assert "8: no feature file 8.npz or 8.npy" in message
    assert not (tmp_path / "store").exists()


def test_bad_files_skipped(tmp_path):
    att = corrupt_npz_dir(tmp_path)
    out = convert(att, tmp_path / "store", on_error="skip")
    store = FeatureStore(out)
    assert store.image_ids == ["1", "4", "7"]
    skipped = read_skipped_image_ids(out)
    assert sorted(skipped) == ["2", "3", "5", "6"]
    assert "NaN" in skipped["3"]
    assert store.metadata["num_skipped"] == 4


def test_bad_tsv_lines_reported(tmp_path):
    path = tmp_path / "x.tsv"
    features, boxes = arrays("1")
    with open(path, "w") as handle:
        handle.write(tsv_line("1", features, boxes))
        short = tsv_line("2", features, boxes).split("\t")
        short[4] = base64.b64encode(boxes[:-1].tobytes()).decode()  # one box short of num_boxes
        handle.write("\t".join(short))
        good = tsv_line("3", features, boxes)
        handle.write(good[: len(good) // 2] + "\n")  # truncated: the features field is cut
        handle.write(tsv_line("4", features[:, :-1], boxes))  # feature width 7, not 8
        handle.write(tsv_line("5", features, boxes).replace("\t", "\t\t", 1))  # an extra field
        handle.write(tsv_line("6", features, boxes))
    with pytest.raises(FeatureStoreError) as error:
        convert(path, tmp_path / "store", image_ids=["1", "2", "3", "4", "5", "6", "404"])
    bad = error.value.bad_ids
    assert sorted(bad) == ["2", "3", "4", "404", "5"]
    assert "boxes field decodes to" in bad["2"]
    assert "7 features per region, the store has 8" in bad["4"]
    assert "fields, expected 6" in bad["5"]
    assert bad["404"] == "not in the TSV files"
    # the same conversion again, leaving the bad images out (it reuses what the first pass wrote)
    out = convert(path, tmp_path / "store", image_ids=["1", "2", "3", "4", "5", "6", "404"], on_error="skip")
    assert FeatureStore(out).image_ids == ["1", "6"]
    assert sorted(read_skipped_image_ids(out)) == ["2", "3", "4", "404", "5"]


def test_missing_hdf5_entry_reported(tmp_path):
    path = write_hdf5(tmp_path / "d.h5", ["1", "2"])
    with pytest.raises(FeatureStoreError, match="3: no data set '3_features'"):
        convert(path, tmp_path / "store", image_ids=["1", "2", "3"])


def test_interrupted_conversion_is_not_a_store_and_resumes(tmp_path, monkeypatch):
    ids = [str(i) for i in range(10)]
    att = write_npz_dir(tmp_path, ids)
    out = tmp_path / "store"
    # 1 read to learn the feature width, then shards of 2: shards 0 and 1 finish, shard 2 is interrupted
    calls = count_calls(monkeypatch, NpzFeatureReader, "read", fail_after=6)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        convert(att, out, shard_size=2)
    assert calls["n"] == 7
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="interrupted"):
        load_feature_store(out)
    manifest = json.loads((tmp_path / ".store.incomplete" / "manifest.json").read_text())
    assert sorted(manifest["shards"]) == ["shard-000000", "shard-000001"]

    monkeypatch.undo()
    calls = count_calls(monkeypatch, NpzFeatureReader, "read")
    convert(att, out, shard_size=2)
    assert calls["n"] == 6  # images 4..9 only: the finished shards were not read again
    assert not (tmp_path / ".store.incomplete").exists()
    store = FeatureStore(out)
    assert store.image_ids == ids
    for image_id in ids:
        np.testing.assert_array_equal(store[image_id]["region_features"], arrays(image_id)[0])


def test_interrupted_tsv_resumes_after_the_finished_shards(tmp_path, monkeypatch):
    ids = [str(i) for i in range(1, 10)]
    path = write_tsv(tmp_path / "x.tsv", ids)
    out = tmp_path / "store"
    calls = count_calls(monkeypatch, TSVFeatureReader, "decode", fail_after=7)  # 1 peek + 3 shards of 2
    with pytest.raises(RuntimeError):
        convert(path, out, shard_size=2)
    assert not out.exists()
    monkeypatch.undo()
    calls = count_calls(monkeypatch, TSVFeatureReader, "decode")
    store = FeatureStore(convert(path, out, shard_size=2))
    assert calls["n"] == 3  # images 7, 8, 9: the reader seeked past the first three shards
    assert store.image_ids == ids
    np.testing.assert_array_equal(store["8"]["region_features"], arrays("8")[0])


def test_resume_false_starts_over_and_settings_must_match(tmp_path, monkeypatch):
    att = write_npz_dir(tmp_path, [str(i) for i in range(6)])
    out = tmp_path / "store"
    count_calls(monkeypatch, NpzFeatureReader, "read", fail_after=3)
    with pytest.raises(RuntimeError):
        convert(att, out, shard_size=2)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="differs in: dtype.*resume=False"):
        convert(att, out, shard_size=2, dtype="float16")
    calls = count_calls(monkeypatch, NpzFeatureReader, "read")
    convert(att, out, shard_size=2, dtype="float16", resume=False)
    assert calls["n"] == 7  # the peek and all six images
    assert len(FeatureStore(out)) == 6


def test_fixing_a_bad_file_redoes_only_its_shard(tmp_path, monkeypatch):
    att = write_npz_dir(tmp_path, [str(i) for i in range(6)])
    (att / "3.npz").write_bytes(b"garbage")
    out = tmp_path / "store"
    with pytest.raises(FeatureStoreError, match="3: cannot read"):
        convert(att, out, shard_size=2)
    np.savez(att / "3.npz", feat=arrays("3")[0])
    calls = count_calls(monkeypatch, NpzFeatureReader, "read")
    store = FeatureStore(convert(att, out, shard_size=2))
    assert calls["n"] == 2  # the shard of images 2 and 3
    assert len(store) == 6 and not read_skipped_image_ids(out)


def test_existing_store(tmp_path, monkeypatch):
    att = write_npz_dir(tmp_path, IDS)
    out = convert(att, tmp_path / "store")
    calls = count_calls(monkeypatch, NpzFeatureReader, "read")
    assert convert(att, out) == out  # same source and settings: nothing to do
    assert calls["n"] == 0
    with pytest.raises(FileExistsError, match="overwrite=True"):
        convert(att, out, dtype="float16")
    convert(att, out, dtype="float16", overwrite=True)
    assert FeatureStore(out).metadata["dtype"] == "float16"
    assert calls["n"] == 6


@pytest.mark.slow  # each worker process imports datasets (seconds)
def test_num_proc_gives_the_same_store(tmp_path):
    ids = [str(i) for i in range(12)]
    att = write_npz_dir(tmp_path, ids)
    one = FeatureStore(convert(att, tmp_path / "one", shard_size=3))
    two = FeatureStore(convert(att, tmp_path / "two", shard_size=3, num_proc=2))
    assert one.image_ids == two.image_ids == sorted(ids, key=int)
    for image_id in ids:
        np.testing.assert_array_equal(one[image_id]["region_features"], two[image_id]["region_features"])


def test_load_is_memory_mapped_and_formats(tmp_path):
    out = convert(write_npz_dir(tmp_path, IDS), tmp_path / "store", image_sizes={i: SIZE for i in IDS})
    dataset = load_feature_store(out)
    assert dataset.cache_files and all(str(tmp_path / "store") in f["filename"] for f in dataset.cache_files)
    assert isinstance(dataset[0]["region_features"], np.ndarray)
    torch_dataset = load_feature_store(out, format="torch")
    import torch

    assert torch_dataset[0]["region_features"].dtype == torch.float32
    store = FeatureStore(out, format="torch")
    assert store["42"]["region_boxes"].shape == (len(arrays("42")[0]), 4)
    assert store.dataset.cache_files
    assert 42 in store and "43" not in store
    with pytest.raises(KeyError, match="'43' is not in the feature store"):
        store["43"]
    assert store.index_of("42") == store.image_ids.index("42")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_feature_store(tmp_path / "nothing")


def test_synthetic_store(tmp_path):
    out = write_synthetic_feature_store(tmp_path / "syn", 25, num_regions=(5, 9), feature_size=16, shard_size=10,
                                        seed=3, progress=False)
    store = FeatureStore(out)
    assert len(store) == 25 and store.image_ids[:3] == ["0", "1", "2"] and store.feature_size == 16
    counts = {store[i]["num_regions"] for i in store}
    assert counts <= set(range(5, 10)) and len(counts) > 1
    record = store["7"]
    assert record["region_features"].shape == (record["num_regions"], 16)
    assert record["region_boxes"].min() >= 0 and record["region_boxes"].max() <= 1
    assert (record["region_boxes"][:, 2:] > record["region_boxes"][:, :2]).all()
    again = FeatureStore(write_synthetic_feature_store(tmp_path / "again", 25, num_regions=(5, 9), feature_size=16,
                                                       seed=3, progress=False))
    np.testing.assert_array_equal(again["7"]["region_features"], record["region_features"])
    other = FeatureStore(write_synthetic_feature_store(tmp_path / "other", 8, feature_size=16, seed=4, progress=False))
    assert other["7"]["region_features"].shape[0] == 36
    assert not np.array_equal(other["7"]["region_features"][:5], record["region_features"][:5])
    assert load_feature_store(out).data.schema.field("region_features").type.storage_type.value_type.value_type \
        == __import__("pyarrow").float16()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(region_features=np.ones((0, 4))), r"shape \(0, 4\)"),
        (dict(region_features=np.ones((2, 4)), boxes=np.ones((3, 4))), r"boxes have shape \(3, 4\), expected \(2, 4\)"),
        (dict(region_features=np.ones((2, 4)), boxes=np.full((2, 4), np.inf)), "boxes contain NaN or inf"),
        (dict(region_features=np.ones((2, 4)), image_width=-3, image_height=4), "image width -3"),
        (dict(region_features=[["a"]]), "not a float array"),
    ],
)
def test_make_record_rejects(kwargs, message):
    with pytest.raises(FeatureRecordError, match=message):
        make_record("1", **kwargs)


def test_bad_options(tmp_path):
    att = write_npz_dir(tmp_path, ["1"])
    with pytest.raises(ValueError, match="dtype must be one of"):
        convert(att, tmp_path / "s", dtype="bfloat16")
    with pytest.raises(ValueError, match="on_error must be"):
        convert(att, tmp_path / "s", on_error="ignore")
    with pytest.raises(ValueError, match="box_dir applies to the npz layout only"):
        convert(write_hdf5(tmp_path / "d.h5", ["1"]), tmp_path / "s", box_dir=tmp_path)


def test_feature_store_over_a_selected_dataset_and_pickling(tmp_path):
    import pickle

    out = write_synthetic_feature_store(tmp_path / "syn", 12, num_regions=(2, 6), feature_size=4, progress=False)
    full = FeatureStore(out)
    subset = FeatureStore(load_feature_store(out).select([9, 3, 5]))
    assert subset.image_ids == ["9", "3", "5"] and "0" not in subset
    np.testing.assert_array_equal(subset["3"]["region_features"], full["3"]["region_features"])
    assert subset.row(0)["image_id"] == "9"
    with pytest.raises(IndexError, match="row 3 is out of range"):
        subset.row(3)
    full["1"]  # the Arrow columns are built; they must not travel in the pickle
    payload = pickle.dumps(full)
    assert len(payload) < 20000
    np.testing.assert_array_equal(pickle.loads(payload)["7"]["region_features"], full["7"]["region_features"])


def rows_of(store):
    return [store.row(index) for index in range(len(store))]


def assert_same_rows(first, second):
    assert len(first) == len(second)
    for one, two in zip(first, second):
        assert one.keys() == two.keys()
        for name, value in one.items():
            if isinstance(value, np.ndarray):
                assert value.dtype == np.float32 and value.flags.writeable
                np.testing.assert_array_equal(value, two[name])
            else:
                assert value == two[name], name


def pread_kinds(store):
    """The way `_PreadColumn` reads each column of each record batch (None: through the map)."""
    return {column.kind for batch in store._pread_rows().batches for column in batch.values()}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_pread_access_reads_the_rows_the_memory_map_holds(tmp_path, dtype):
    ids = [str(i) for i in range(40)]
    att = write_npz_dir(tmp_path, ids)
    sizes = {i: SIZE for i in ids[::3]}  # the others have no size: null boxes and widths
    out = convert(att, tmp_path / "store", dtype=dtype, image_sizes=sizes, shard_size=7)
    pread, mmap = FeatureStore(out), FeatureStore(out, access="mmap")
    assert pread.access == "pread" and mmap.access == "mmap" and "access='pread'" in repr(pread)
    assert pread_kinds(pread) == {"string", "array2d", "number"}  # every column read with os.pread
    assert_same_rows(rows_of(pread), rows_of(mmap))
    record = pread["3"]
    assert record["region_boxes"] is not None and record["image_width"] == SIZE[0]
    assert pread["4"]["region_boxes"] is None and pread["4"]["image_width"] is None
    assert pread["4"]["region_boxes_raw"] is not None
    features, _ = arrays("4")
    np.testing.assert_allclose(pread["4"]["region_features"], features, rtol=1e-3 if dtype == "float16" else 0)
    import torch

    tensor = FeatureStore(out, format="torch")["5"]["region_features"]
    assert isinstance(tensor, torch.Tensor) and torch.equal(tensor, torch.from_numpy(mmap["5"]["region_features"]))


def test_pread_access_reads_nothing_through_the_map(tmp_path, monkeypatch):
    out = write_synthetic_feature_store(tmp_path / "syn", 30, num_regions=(2, 6), feature_size=8, progress=False)
    store = FeatureStore(out)
    expected = rows_of(FeatureStore(out, access="mmap"))

    def through_the_map(*args):
        raise AssertionError("a cell was read through the memory map")

    monkeypatch.setattr(fs, "_array2d", through_the_map)
    assert_same_rows(rows_of(store), expected)


def test_pread_access_over_selected_concatenated_and_pickled_stores(tmp_path):
    import pickle

    import datasets

    first = write_synthetic_feature_store(tmp_path / "a", 12, num_regions=(2, 6), feature_size=F, dtype="float32",
                                          progress=False)
    second = convert(write_npz_dir(tmp_path, [str(i) for i in range(500, 509)]), tmp_path / "b", dtype="float32",
                     image_sizes={"503": SIZE})
    both = datasets.concatenate_datasets([load_feature_store(path, format=None) for path in (first, second)])
    store = FeatureStore(both)
    assert store.access == "pread" and len(store._pread_rows().files) == 2 and len(store) == 21
    assert_same_rows(rows_of(store), rows_of(FeatureStore(both, access="mmap")))
    np.testing.assert_array_equal(store["503"]["region_features"], arrays("503")[0])
    subset = FeatureStore(both.select([20, 2, 15]))
    assert subset.access == "pread" and subset.image_ids == ["508", "2", "503"]
    assert_same_rows(rows_of(subset), [store["508"], store["2"], store["503"]])
    again = pickle.loads(pickle.dumps(subset))  # the descriptors do not travel; the files are opened again
    assert again._pread is None and again.access == "pread"
    assert_same_rows(rows_of(again), rows_of(subset))


def test_pread_access_falls_back_to_the_map(tmp_path, caplog):
    import datasets

    out = write_synthetic_feature_store(tmp_path / "syn", 10, num_regions=(2, 6), feature_size=4, progress=False)
    loaded = load_feature_store(out, format=None)
    in_memory = datasets.Dataset.from_dict(loaded.to_dict(), features=loaded.features)
    store = FeatureStore(in_memory)  # no files to read from: nothing is mapped either
    assert store.access == "mmap" and not caplog.records
    assert_same_rows(rows_of(store), rows_of(FeatureStore(out)))
    # rows taken and concatenated in memory: the table is not the files' rows any more
    taken = datasets.concatenate_datasets([loaded.select([1, 2]), loaded.select([7])])
    with caplog.at_level("WARNING", logger="processing.feature_stores"):
        store = FeatureStore(taken)
    assert store.access == "mmap" and "read through the memory map" in caplog.text
    assert store.image_ids == ["1", "2", "7"] and store["7"]["num_regions"] == FeatureStore(out)["7"]["num_regions"]
    with pytest.raises(ValueError, match="access must be 'pread' or 'mmap', not 'random'"):
        FeatureStore(out, access="random")


def mapped_rss(directory) -> int:
    """Bytes of the files under `directory` that are mapped into this process and resident (/proc/self/smaps)."""
    total, counting = 0, False
    with open("/proc/self/smaps", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's header: address perms offset dev inode [path]
                counting = len(fields) >= 6 and fields[5].startswith(str(directory))
            elif counting and fields[0] == "Rss:":
                total += int(fields[1]) * 1024
    return total


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/smaps"), reason="Linux /proc/self/smaps")
def test_pread_access_leaves_no_store_pages_resident(tmp_path):
    """Reading every row of a store: through the memory map, its pages stay mapped (resident, counted in RSS);
    with pread, what stays mapped is a small part of it that does not grow with the rows read."""
    out = write_synthetic_feature_store(tmp_path / "syn", 200, num_regions=36, feature_size=256, dtype="float32",
                                        progress=False)
    features = 200 * 36 * 256 * 4
    pread = FeatureStore(out)
    rows_of(pread)
    assert mapped_rss(out) < 0.1 * features
    mmap = FeatureStore(out, access="mmap")
    rows_of(mmap)
    assert mapped_rss(out) > 0.8 * features
