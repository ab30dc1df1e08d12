"""Caption files (the Karpathy split JSON, COCO caption annotations) and pairing captions with region features.

Both loaders return the same records, one per image, in file order:
``{"image_id": str, "file_name": str, "split": str or None, "captions": [raw strings], "tokens": [[words]],
"width": int or None, "height": int or None}``.

- Karpathy split JSON (``dataset_coco.json``, ``dataset_flickr8k.json``, ``dataset_flickr30k.json``):
  ``{"images": [{"filepath", "filename", "imgid", "cocoid", "split", "sentences": [{"raw", "tokens"}]}]}``.
  ``file_name`` is ``filepath/filename`` (``val2014/COCO_val2014_000000391895.jpg``; Flickr has no filepath),
  the path under the image root. ``image_id`` (``id_key="auto"``) is the image's ``image_id`` when the file
  has one (the generated quick-start data), else its ``cocoid`` (COCO: the id the bottom-up features use), else
  the file name without its extension (Flickr: the id its bottom-up features use). ``tokens`` are the file's
  when present, else the caption split by the tokenizer's rule (`tokenization_glied.split_caption`).
- COCO caption annotations (``captions_train2014.json``): ``{"images": [{"id", "file_name", "width",
  "height"}], "annotations": [{"image_id", "caption"}]}``. Images without a caption are left out.

`build_caption_dataset` pairs records with a `FeatureStore` (or any container of image ids) and gives a
`datasets.Dataset`; images that have captions but no features raise a `ValueError` listing their ids, or are
left out (with a warning giving the count) when ``on_missing="skip"``.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

from .tokenization_glied import split_caption

logger = logging.getLogger(__name__)

KARPATHY_SPLITS = ("train", "val", "test", "restval")
ID_KEYS = ("auto", "image_id", "cocoid", "imgid", "filename")
_NUMBER_OF_IDS_SHOWN = 20


def _load_json(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, expected an object with an 'images' key")
    return data


def _require(mapping, key, where, path):
    if not isinstance(mapping, dict):
        raise ValueError(f"{path}: {where} is a {type(mapping).__name__}, expected a JSON object")
    if key not in mapping:
        raise ValueError(f"{path}: {where} has no {key!r} key")
    return mapping[key]


def _list(value, where, path):
    if not isinstance(value, list):
        raise ValueError(f"{path}: {where} is a {type(value).__name__}, expected a list")
    return value


def _splits_wanted(split, restval_into_train, splits_in_file, path):
    names = [split] if isinstance(split, str) else list(split)
    if not names or not all(isinstance(name, str) for name in names):
        raise ValueError(f"split must be a split name or a list of them, not {split!r}")
    wanted = set()
    for name in names:
        if name == "all":
            return None
        if name not in KARPATHY_SPLITS and name not in splits_in_file:
            known = sorted(set(KARPATHY_SPLITS) | set(splits_in_file)) + ["all"]
            raise ValueError(f"unknown split {name!r} for {path}; expected one of {known}")
        wanted.add(name)
        if name == "train" and restval_into_train:
            wanted.add("restval")
    return wanted


def _image_id(image, id_key, where, path):
    if id_key == "auto":
        for key in ("image_id", "cocoid"):
            if key in image:
                return str(image[key])
        id_key = "filename"
    value = _require(image, id_key, where, path)
    if id_key == "filename":
        return os.path.splitext(os.path.basename(str(value)))[0]
    return str(value)


def _optional_int(value):
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def load_karpathy_split(path, split="train", restval_into_train: bool = True, id_key: str = "auto") -> list[dict]:
    """The images of `split` in a Karpathy split JSON, as records (see the module docstring).

    Args:
        path: ``dataset_coco.json`` (or the Flickr8k/30k files, or the generated quick-start data).
        split: ``"train"``, ``"val"``, ``"test"``, ``"restval"``, another split the file uses, ``"all"``, or a
            list of them.
        restval_into_train: ``"train"`` includes the ``restval`` images (the usual 113,287-image COCO train).
        id_key: where the image id comes from: ``"auto"``, ``"image_id"``, ``"cocoid"``, ``"imgid"`` or
            ``"filename"`` (the file name without extension).
    """
    if id_key not in ID_KEYS:
        raise ValueError(f"id_key must be one of {ID_KEYS}, not {id_key!r}")
    data = _load_json(path)
    images = _list(_require(data, "images", "the top level", path), "'images'", path)
    splits_in_file = set()
    for index, image in enumerate(images):
        splits_in_file.add(str(_require(image, "split", f"images[{index}]", path)))
    wanted = _splits_wanted(split, restval_into_train, splits_in_file, path)
    records, seen = [], set()
    for index, image in enumerate(images):
        where = f"images[{index}]"
        if wanted is not None and str(image["split"]) not in wanted:
            continue
        filename = str(_require(image, "filename", where, path))
        image_id = _image_id(image, id_key, where, path)
        if image_id in seen:
            raise ValueError(f"{path}: image id {image_id!r} occurs twice ({where})")
        seen.add(image_id)
        captions, tokens = [], []
        sentences = _list(_require(image, "sentences", where, path), f"{where}['sentences']", path)
        for number, sentence in enumerate(sentences):
            raw = _require(sentence, "raw", f"{where}['sentences'][{number}]", path)
            if not isinstance(raw, str):
                raise ValueError(f"{path}: {where}['sentences'][{number}]['raw'] is not a string")
            captions.append(raw)
            words = sentence.get("tokens")
            tokens.append([str(word) for word in words] if isinstance(words, list) else split_caption(raw))
        filepath = image.get("filepath")
        records.append({
            "image_id": image_id,
            "file_name": f"{filepath}/{filename}" if filepath else filename,
            "split": str(image["split"]),
            "captions": captions,
            "tokens": tokens,
            "width": _optional_int(image.get("width")),
            "height": _optional_int(image.get("height")),
        })
    return records


def load_coco_captions(path) -> list[dict]:
    """The images of a COCO caption annotation file (``captions_train2014.json``) that have captions, as
    records (see the module docstring); ``split`` is None."""
    data = _load_json(path)
    images = _list(_require(data, "images", "the top level", path), "'images'", path)
    annotations = _list(_require(data, "annotations", "the top level", path), "'annotations'", path)
    by_id = {}
    for index, image in enumerate(images):
        where = f"images[{index}]"
        image_id = str(_require(image, "id", where, path))
        if image_id in by_id:
            raise ValueError(f"{path}: image id {image_id!r} occurs twice ({where})")
        by_id[image_id] = {
            "image_id": image_id,
            "file_name": str(_require(image, "file_name", where, path)),
            "split": None,
            "captions": [],
            "tokens": [],
            "width": _optional_int(image.get("width")),
            "height": _optional_int(image.get("height")),
        }
    unknown = []
    for index, annotation in enumerate(annotations):
        where = f"annotations[{index}]"
        image_id = str(_require(annotation, "image_id", where, path))
        caption = _require(annotation, "caption", where, path)
        if not isinstance(caption, str):
            raise ValueError(f"{path}: {where}['caption'] is not a string")
        record = by_id.get(image_id)
        if record is None:
            unknown.append(image_id)
            continue
        caption = caption.strip()
        record["captions"].append(caption)
        record["tokens"].append(split_caption(caption))
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} annotation(s) name image ids that are not in 'images': "
                         f"{_show(sorted(set(unknown)))}")
    return [record for record in by_id.values() if record["captions"]]


def load_captions(path, split="train", restval_into_train: bool = True) -> list[dict]:
    """Records of either caption file format, told apart by its keys: a COCO annotation file has
    ``annotations`` (`split` does not apply to it), a Karpathy split JSON has ``sentences`` in its images."""
    data = _load_json(path)
    if "annotations" in data:
        return load_coco_captions(path)
    return load_karpathy_split(path, split=split, restval_into_train=restval_into_train)


def image_sizes_from_records(records: Iterable[Mapping]) -> dict[str, tuple[int, int]]:
    """``{image_id: (width, height)}`` of the records that know their size (COCO annotation files do); pass it
    as ``convert_feature_store(..., image_sizes=...)`` to normalise boxes of stores that lack the size."""
    return {
        record["image_id"]: (record["width"], record["height"])
        for record in records
        if record.get("width") and record.get("height")
    }


def _show(ids):
    ids = list(ids)
    shown = ", ".join(repr(image_id) for image_id in ids[:_NUMBER_OF_IDS_SHOWN])
    return shown + (f", ... and {len(ids) - _NUMBER_OF_IDS_SHOWN} more" if len(ids) > _NUMBER_OF_IDS_SHOWN else "")


def missing_image_ids(records: Iterable[Mapping], feature_store) -> list[str]:
    """Ids of the records whose image is not in `feature_store` (anything with ``in``: a `FeatureStore`, a set)."""
    return [record["image_id"] for record in records if record["image_id"] not in feature_store]


def build_caption_dataset(records, feature_store, on_missing: str = "raise", one_row_per_caption: bool = False):
    """A `datasets.Dataset` of the records whose image has features in `feature_store`.

    Rows: ``image_id``, ``file_name``, ``captions`` (list of strings) and ``tokens`` (list of word lists), or
    with `one_row_per_caption` ``caption`` and ``tokens`` (one word list) per caption; plus ``feature_index``,
    the row of the image in ``feature_store.dataset``, when `feature_store` is a `FeatureStore`.

    Images with captions but no features raise a `ValueError` listing their ids (``on_missing="raise"``), or
    are left out with a warning that gives their count (``on_missing="skip"``).
    """
    import datasets

    if on_missing not in ("raise", "skip"):
        raise ValueError(f"on_missing must be 'raise' or 'skip', not {on_missing!r}")
    records = list(records)
    for index, record in enumerate(records):
        missing_keys = [key for key in ("image_id", "file_name", "captions", "tokens") if key not in record]
        if missing_keys:
            raise ValueError(f"records[{index}] has no {missing_keys[0]!r} key")
    where = getattr(feature_store, "path", None)
    where = f" {where}" if where else ""
    missing = missing_image_ids(records, feature_store)
    if missing:
        message = f"{len(missing)} image(s) have captions but no region features in the feature store{where}"
        if on_missing == "raise":
            raise ValueError(f"{message}: {_show(missing)}; pass on_missing='skip' to leave them out")
        warnings.warn(f"{message}; left out: {_show(missing)}", stacklevel=2)
        logger.warning("%s; left out", message)
        missing_set = set(missing)
        records = [record for record in records if record["image_id"] not in missing_set]
    if not records:
        raise ValueError(f"no image has both captions and region features in the feature store{where}")
    index_of = getattr(feature_store, "index_of", None)
    columns = {"image_id": [], "file_name": []}
    if one_row_per_caption:
        columns.update(caption=[], tokens=[])
    else:
        columns.update(captions=[], tokens=[])
    if index_of is not None:
        columns["feature_index"] = []
    for record in records:
        repeats = len(record["captions"]) if one_row_per_caption else 1
        for number in range(repeats):
            columns["image_id"].append(record["image_id"])
            columns["file_name"].append(record["file_name"])
            if one_row_per_caption:
                columns["caption"].append(record["captions"][number])
                columns["tokens"].append(list(record["tokens"][number]))
            else:
                columns["captions"].append(list(record["captions"]))
                columns["tokens"].append([list(words) for words in record["tokens"]])
            if index_of is not None:
                columns["feature_index"].append(index_of(record["image_id"]))
    string = datasets.Value("string")
    sequence = getattr(datasets, "List", None) or datasets.Sequence  # datasets < 4 has Sequence only
    features = {"image_id": string, "file_name": string}
    if one_row_per_caption:
        features.update(caption=string, tokens=sequence(string))
    else:
        features.update(captions=sequence(string), tokens=sequence(sequence(string)))
    if index_of is not None:
        features["feature_index"] = datasets.Value("int64")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))
