"""Region-feature stores: the layouts people have, turned once into one memory-mapped `datasets` data set.

Bottom-up region features come in three layouts. Each has a reader here that yields one record per image:

- ``npz``: a directory of per-image files as in self-critical.pytorch: ``<dir>/<image_id>.npz`` with the
  array ``feat`` (N, F) (``features`` or ``x`` are accepted too), or ``<dir>/<image_id>.npy`` holding the
  (N, F) array itself. Boxes (N, 4), pixel x1 y1 x2 y2, lie in a sibling directory ``<dir_box>/<image_id>.npy``
  (``box_dir``; when not given, ``cocobu_att`` -> ``cocobu_box`` is tried) or inside the ``.npz`` as
  ``boxes``/``bbox``. An ``.npz`` may carry ``image_w`` and ``image_h``.
- ``tsv``: the original bottom-up attention TSV, one image a line, tab-separated fields
  ``image_id, image_w, image_h, num_boxes, boxes, features`` (boxes and features base64-encoded float32).
  The files are tens of GB: they are streamed line by line in binary mode and split on tabs, so no line is
  ever held twice and the csv module's field size limit (131,072 characters, smaller than one feature field)
  never applies. A source may be one file, several (``.tsv.0``, ``.tsv.1``...) or a directory of them.
- ``hdf5``: one HDF5 file with the data sets ``<image_id>_features`` (N, F) and ``<image_id>_boxes``
  (N, 4, pixels) as in meshed-memory-transformer. The image size is usually absent; the attributes
  ``image_w``/``image_h`` of ``<image_id>_features`` are read when present.

A record is ``{"image_id": str, "region_features": float32 (N, F), "region_boxes": float32 (N, 4) or None,
"region_boxes_raw": float32 (N, 4) or None, "image_width": int or None, "image_height": int or None}``.

Boxes (decision): ``region_boxes`` are always x1 y1 x2 y2 normalised to [0, 1] (divided by the image width and
height, then clipped), the form the processor and model take; when the image size is unknown they cannot be
normalised and ``region_boxes`` is None. ``region_boxes_raw`` keeps the boxes exactly as the source stores
them (pixels in all three layouts), so nothing is lost: pass ``image_sizes={image_id: (width, height)}``
(e.g. the ``width``/``height`` of a COCO annotation file's images) to normalise them. A size found in the
source wins over ``image_sizes``. Images without boxes have both set to None.

`convert_feature_store` writes the records once into a `datasets` data set (Arrow files; `FeatureStore` copies
a row's arrays out of them with positioned reads, so training memory does not grow with the store, nor with how
much of it a run has read). The conversion is

- atomic: everything is written under the hidden sibling ``.<name>.incomplete/`` and renamed to ``output_dir``
  at the very end, so a half-written store never looks whole;
- resumable: images are written in shards of ``shard_size`` images, each recorded in a manifest when finished;
  re-running after an interruption reuses the finished shards (for the TSV, it seeks to where they end);
- strict about bad input: a missing or unreadable file, a wrong shape, NaN/inf, a base64 field of the wrong
  length, a feature width that differs from the rest, are reported by image id. By default a
  `FeatureStoreError` lists them all after the pass (the finished shards stay, so fixing the files and
  re-running redoes only the shards that held them); ``on_error="skip"`` leaves them out and writes their ids
  and reasons to ``<output_dir>/skipped_image_ids.txt``.

`load_feature_store` gives the memory-mapped `datasets.Dataset`; `FeatureStore` looks rows up by image id.
`write_synthetic_feature_store` writes a random store of any size in the same way, shard by shard (tests and
memory benchmarks at COCO scale, 123,287 images).

`datasets` and `h5py` are the ``train`` extra: they are imported when first needed.
"""
from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import weakref
import zipfile
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

FEATURE_STORE_FORMATS = ("npz", "tsv", "hdf5")
STORAGE_DTYPES = ("float32", "float16")
TSV_FIELDNAMES = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
METADATA_FILE = "feature_store.json"
SKIPPED_FILE = "skipped_image_ids.txt"
STORE_COLUMNS = (
    "image_id",
    "region_features",
    "region_boxes",
    "region_boxes_raw",
    "image_width",
    "image_height",
    "num_regions",
)
_ARRAY_COLUMNS = ("region_features", "region_boxes", "region_boxes_raw")
_FORMAT_VERSION = 1
_MANIFEST = "manifest.json"
_WRITER_BATCH_SIZE = 16  # rows buffered before an Arrow record batch is written: 16 x 36 x 2048 floats
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_NUMBER_OF_BAD_IDS_SHOWN = 20


class FeatureRecordError(ValueError):
    """One image's features are missing or unusable; the message says why (the caller knows the id)."""


class FeatureStoreError(ValueError):
    """Some images of a store have missing or unusable features; `bad_ids` maps each image id to the reason."""

    def __init__(self, message: str, bad_ids: Mapping[str, str]):
        super().__init__(message)
        self.bad_ids = dict(bad_ids)


def _import_datasets():
    try:
        import datasets
    except ImportError as error:  # pragma: no cover - the train extra is installed in development
        raise ImportError("feature stores need `datasets`: pip install 'glied[train]'") from error
    return datasets


def _import_h5py():
    try:
        import h5py
    except ImportError as error:  # pragma: no cover
        raise ImportError("HDF5 feature files need `h5py`: pip install 'glied[train]'") from error
    return h5py


# ----------------------------------------------------------------------------------------------------------
# one record


def make_record(image_id, region_features, boxes=None, image_width=None, image_height=None) -> dict:
    """Check one image's arrays and build its record (see the module docstring); bad input raises
    `FeatureRecordError` naming the problem."""
    image_id = str(image_id)
    try:
        features = np.asarray(region_features, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise FeatureRecordError(f"region features are not a float array ({error})") from None
    if features.ndim != 2 or features.shape[0] < 1 or features.shape[1] < 1:
        raise FeatureRecordError(f"region features have shape {features.shape}, expected (N, F) with N, F >= 1")
    if not np.isfinite(features).all():
        raise FeatureRecordError("region features contain NaN or inf")
    width = _positive_int_or_none(image_width, "image width")
    height = _positive_int_or_none(image_height, "image height")
    raw = normalised = None
    if boxes is not None:
        try:
            raw = np.asarray(boxes, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise FeatureRecordError(f"boxes are not a float array ({error})") from None
        if raw.shape != (features.shape[0], 4):
            raise FeatureRecordError(f"boxes have shape {raw.shape}, expected ({features.shape[0]}, 4)")
        if not np.isfinite(raw).all():
            raise FeatureRecordError("boxes contain NaN or inf")
        if width is not None and height is not None:
            # x1 / w, y1 / h, x2 / w, y2 / h, clipped to the image
            scale = np.array([width, height, width, height], dtype=np.float32)
            normalised = np.clip(raw / scale, 0.0, 1.0)
    return {
        "image_id": image_id,
        "region_features": features,
        "region_boxes": normalised,
        "region_boxes_raw": raw,
        "image_width": width,
        "image_height": height,
    }


def _positive_int_or_none(value, name):
    if value is None:
        return None
    try:
        number = float(np.asarray(value).reshape(()))
    except (TypeError, ValueError):
        raise FeatureRecordError(f"{name} {value!r} is not a number") from None
    if not np.isfinite(number) or number <= 0 or number != int(number):
        raise FeatureRecordError(f"{name} {value!r} is not a positive whole number")
    return int(number)


def _image_size(image_sizes, image_id):
    if not image_sizes:
        return None, None
    size = image_sizes.get(image_id)
    if size is None and image_id.isdigit():
        size = image_sizes.get(int(image_id))
    if size is None:
        return None, None
    if len(size) != 2:
        raise FeatureRecordError(f"image_sizes[{image_id!r}] = {size!r} is not (width, height)")
    return size[0], size[1]


def _normalise_ids(image_ids) -> list[str] | None:
    if image_ids is None:
        return None
    if isinstance(image_ids, (str, bytes)):
        raise ValueError("image_ids must be a list of ids, not one string")
    return list(dict.fromkeys(str(image_id) for image_id in image_ids))


def _id_sort_key(image_id: str):
    return (0, int(image_id), "") if image_id.isdigit() else (1, 0, image_id)


def _digest(values) -> str:
    sha = hashlib.sha1()
    for value in values:
        sha.update(repr(value).encode())
        sha.update(b"\0")
    return sha.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# readers
#
# An indexed reader (npz, hdf5, synthetic) knows its image ids up front and reads one image with `read(id)`;
# the TSV reader can only stream, so it reads spans of lines that start at a byte offset.


class NpzFeatureReader:
    """Per-image ``.npz``/``.npy`` files (self-critical.pytorch layout); see the module docstring."""

    format = "npz"
    feature_size = None

    def __init__(self, feature_dir, box_dir=None, image_sizes: Mapping | None = None, image_ids=None):
        self.feature_dir = Path(feature_dir)
        if not self.feature_dir.is_dir():
            raise FileNotFoundError(f"feature directory {self.feature_dir} does not exist")
        if box_dir is None and self.feature_dir.name.endswith("_att"):
            sibling = self.feature_dir.with_name(self.feature_dir.name[: -len("_att")] + "_box")
            box_dir = sibling if sibling.is_dir() else None
        self.box_dir = None if box_dir is None else Path(box_dir)
        if self.box_dir is not None and not self.box_dir.is_dir():
            raise FileNotFoundError(f"box directory {self.box_dir} does not exist")
        self.image_sizes = image_sizes
        self._requested_ids = _normalise_ids(image_ids)

    def ids(self) -> list[str]:
        if self._requested_ids is not None:
            return list(self._requested_ids)
        found = set()
        with os.scandir(self.feature_dir) as entries:
            for entry in entries:
                stem, suffix = os.path.splitext(entry.name)
                if suffix in (".npz", ".npy") and not stem.startswith("."):
                    found.add(stem)
        return sorted(found, key=_id_sort_key)

    def fingerprint(self) -> dict:
        return {"source": str(self.feature_dir.resolve()), "box_dir": None if self.box_dir is None else str(self.box_dir.resolve())}

    def read(self, image_id) -> dict:
        image_id = str(image_id)
        npz, npy = self.feature_dir / f"{image_id}.npz", self.feature_dir / f"{image_id}.npy"
        boxes = width = height = None
        if npz.is_file():
            path = npz
            try:
                with np.load(path, allow_pickle=False) as arrays:
                    key = next((k for k in ("feat", "features", "x") if k in arrays.files), None)
                    if key is None:
                        raise FeatureRecordError(f"{path} has no 'feat' array (it holds {sorted(arrays.files)})")
                    features = arrays[key]
                    box_key = next((k for k in ("boxes", "bbox") if k in arrays.files), None)
                    boxes = None if box_key is None else arrays[box_key]
                    width = arrays["image_w"] if "image_w" in arrays.files else None
                    height = arrays["image_h"] if "image_h" in arrays.files else None
            except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
                if isinstance(error, FeatureRecordError):
                    raise
                raise FeatureRecordError(f"cannot read {path}: {error}") from None
        elif npy.is_file():
            features = _load_npy(npy)
        else:
            raise FeatureRecordError(f"no feature file {image_id}.npz or {image_id}.npy in {self.feature_dir}")
        if self.box_dir is not None:
            box_path = self.box_dir / f"{image_id}.npy"
            if not box_path.is_file():
                raise FeatureRecordError(f"no box file {box_path}")
            boxes = _load_npy(box_path)
        if width is None or height is None:
            width, height = _image_size(self.image_sizes, image_id)
        return make_record(image_id, features, boxes, width, height)

    def close(self):
        pass


def _load_npy(path):
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise FeatureRecordError(f"cannot read {path}: {error}") from None


class HDF5FeatureReader:
    """One HDF5 file with ``<id>_features`` and ``<id>_boxes`` (meshed-memory-transformer layout)."""

    format = "hdf5"
    feature_size = None

    def __init__(self, path, image_sizes: Mapping | None = None, image_ids=None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"HDF5 feature file {self.path} does not exist")
        self.image_sizes = image_sizes
        self._requested_ids = _normalise_ids(image_ids)
        self._file = None

    def __getstate__(self):  # an open h5py file does not cross process boundaries
        state = dict(self.__dict__)
        state["_file"] = None
        return state

    def _open(self):
        if self._file is None:
            h5py = _import_h5py()
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as error:
                raise ValueError(f"cannot open {self.path} as HDF5: {error}") from None
        return self._file

    def ids(self) -> list[str]:
        if self._requested_ids is not None:
            return list(self._requested_ids)
        suffix = "_features"
        found = [key[: -len(suffix)] for key in self._open().keys() if key.endswith(suffix)]
        return sorted(found, key=_id_sort_key)

    def fingerprint(self) -> dict:
        stat = self.path.stat()
        return {"source": str(self.path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def read(self, image_id) -> dict:
        image_id = str(image_id)
        handle = self._open()
        name = f"{image_id}_features"
        if name not in handle:
            raise FeatureRecordError(f"no data set {name!r} in {self.path}")
        try:
            dataset = handle[name]
            features = dataset[()]
            width, height = dataset.attrs.get("image_w"), dataset.attrs.get("image_h")
            boxes = handle[f"{image_id}_boxes"][()] if f"{image_id}_boxes" in handle else None
        except (OSError, ValueError, KeyError) as error:
            raise FeatureRecordError(f"cannot read {name!r} from {self.path}: {error}") from None
        if width is None or height is None:
            width, height = _image_size(self.image_sizes, image_id)
        return make_record(image_id, features, boxes, width, height)

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


class TSVFeatureReader:
    """The bottom-up attention TSV files, streamed; see the module docstring."""

    format = "tsv"
    feature_size = None

    def __init__(self, paths, image_sizes: Mapping | None = None, fieldnames=TSV_FIELDNAMES):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [Path(path) for path in paths]
        if not self.paths:
            raise ValueError("no TSV file given")
        for path in self.paths:
            if not path.is_file():
                raise FileNotFoundError(f"TSV feature file {path} does not exist")
        self.fieldnames = tuple(fieldnames)
        missing = [name for name in TSV_FIELDNAMES if name not in self.fieldnames]
        if missing:
            raise ValueError(f"TSV fieldnames lack {missing}")
        self.image_sizes = image_sizes

    def fingerprint(self) -> dict:
        files = []
        for path in self.paths:
            stat = path.stat()
            files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
        return {"source": files, "fieldnames": list(self.fieldnames)}

    def file_sizes(self) -> list[int]:
        return [path.stat().st_size for path in self.paths]

    def span(self, file_index: int, start: int, max_records: int, wanted=None) -> "_TSVSpan":
        """Iterate (image_id, record or None, error or None, bytes) over up to `max_records` lines of file
        `file_index` from byte `start`; after the loop `end` is the next line's offset and `eof` is set."""
        return _TSVSpan(self, file_index, start, max_records, wanted)

    def __iter__(self):
        return self.records()

    def records(self, wanted=None):
        """Every record of every file (of the ids in the set `wanted`), in order; a bad line raises
        `FeatureStoreError` naming its image id."""
        for file_index in range(len(self.paths)):
            for image_id, record, error, _ in self.span(file_index, 0, 2**62, wanted):
                if error is not None:
                    raise FeatureStoreError(f"image {image_id}: {error}", {image_id: error})
                if record is not None:
                    yield record

    def decode(self, fields: list[bytes]) -> dict:
        values = dict(zip(self.fieldnames, fields))
        image_id = values["image_id"].decode("utf-8", "replace")
        try:
            num_boxes = int(values["num_boxes"])
        except ValueError:
            raise FeatureRecordError(f"num_boxes {values['num_boxes'][:20]!r} is not an integer") from None
        if num_boxes < 1:
            raise FeatureRecordError(f"num_boxes is {num_boxes}")
        boxes = _b64_floats(values["boxes"], "boxes")
        if boxes.size != num_boxes * 4:
            raise FeatureRecordError(
                f"boxes field decodes to {boxes.size} floats, expected num_boxes x 4 = {num_boxes * 4}"
            )
        features = _b64_floats(values["features"], "features")
        if features.size == 0 or features.size % num_boxes:
            raise FeatureRecordError(
                f"features field decodes to {features.size} floats, not a multiple of num_boxes = {num_boxes}"
            )
        width, height = _tsv_size(values["image_w"]), _tsv_size(values["image_h"])
        if width is None or height is None:
            width, height = _image_size(self.image_sizes, image_id)
        return make_record(image_id, features.reshape(num_boxes, -1), boxes.reshape(num_boxes, 4), width, height)

    def close(self):
        pass


def _tsv_size(field: bytes):
    try:
        return float(field)
    except ValueError:
        raise FeatureRecordError(f"image size {field[:20]!r} is not a number") from None


def _b64_floats(field: bytes, name: str) -> np.ndarray:
    try:
        raw = base64.b64decode(field, validate=True)
    except (binascii.Error, ValueError) as error:
        raise FeatureRecordError(f"{name} field is not valid base64 ({error})") from None
    if len(raw) % 4:
        raise FeatureRecordError(f"{name} field decodes to {len(raw)} bytes, not a whole number of float32")
    return np.frombuffer(raw, dtype=np.float32)


class _TSVSpan:
    def __init__(self, reader: TSVFeatureReader, file_index, start, max_records, wanted):
        self.reader, self.file_index, self.start = reader, file_index, start
        self.max_records, self.wanted = max_records, wanted
        self.end, self.eof = start, False

    def __iter__(self):
        reader = self.reader
        path = reader.paths[self.file_index]
        num_fields = len(reader.fieldnames)
        with open(path, "rb") as handle:
            handle.seek(self.start)
            records = 0
            while records < self.max_records:
                line = handle.readline()
                if not line:
                    break
                self.end = handle.tell()
                fields = line.rstrip(b"\r\n").split(b"\t")
                if fields == [b""] or fields[0] == b"image_id":  # a blank line or a header row
                    continue
                records += 1
                image_id = fields[0].decode("utf-8", "replace")
                if self.wanted is not None and image_id not in self.wanted:
                    yield image_id, None, None, len(line)
                    continue
                if len(fields) != num_fields:
                    error = f"line at byte {self.end - len(line)} of {path} has {len(fields)} fields, expected {num_fields}"
                    yield image_id, None, error, len(line)
                    continue
                try:
                    yield image_id, reader.decode(fields), None, len(line)
                except FeatureRecordError as error:
                    yield image_id, None, str(error), len(line)
            self.eof = self.end >= os.fstat(handle.fileno()).st_size


class _SyntheticReader:
    """Random records for `write_synthetic_feature_store`: image `i` is generated from `(seed, i)` alone."""

    format = "synthetic"

    def __init__(self, num_images, num_regions, feature_size, seed, image_size):
        self.num_images, self.num_regions, self.feature_size = num_images, num_regions, feature_size
        self.seed, self.image_size = seed, image_size

    def ids(self):
        return [str(index) for index in range(self.num_images)]

    def fingerprint(self):
        return {
            "source": "synthetic",
            "num_images": self.num_images,
            "feature_size": self.feature_size,
            "num_regions": list(self.num_regions) if isinstance(self.num_regions, tuple) else self.num_regions,
            "seed": self.seed,
            "image_size": list(self.image_size),
        }

    def read(self, image_id):
        rng = np.random.default_rng([self.seed, int(image_id)])
        if isinstance(self.num_regions, tuple):
            num_regions = int(rng.integers(self.num_regions[0], self.num_regions[1] + 1))
        else:
            num_regions = self.num_regions
        # bottom-up features are non-negative (mean-pooled ReLU outputs)
        features = np.abs(rng.standard_normal((num_regions, self.feature_size), dtype=np.float32))
        width, height = self.image_size
        corners = rng.random((num_regions, 2), dtype=np.float32) * 0.7
        sizes = 0.05 + rng.random((num_regions, 2), dtype=np.float32) * 0.25
        boxes = np.concatenate([corners, corners + sizes], axis=1) * np.array([width, height, width, height])
        return make_record(image_id, features, boxes, width, height)

    def close(self):
        pass


def _resolve_source(source, format):
    """(format, paths): which layout `source` has; a directory, a file, or a list of TSV files."""
    if format not in ("auto",) + FEATURE_STORE_FORMATS:
        raise ValueError(f"unknown feature store format {format!r}; expected 'auto' or one of {FEATURE_STORE_FORMATS}")
    if isinstance(source, (list, tuple)):
        paths = [Path(path) for path in source]
        if format not in ("auto", "tsv"):
            raise ValueError(f"a list of files is a TSV source; format={format!r} takes one path")
        return "tsv", paths
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"feature store source {path} does not exist")
    if path.is_dir():
        names = sorted(os.listdir(path))
        tsv_files = [path / name for name in names if ".tsv" in name and (path / name).is_file()]
        if format == "tsv" or (format == "auto" and tsv_files and not _has_npz(names)):
            if not tsv_files:
                raise FileNotFoundError(f"no .tsv files in {path}")
            return "tsv", tsv_files
        if format in ("auto", "npz"):
            if format == "auto" and not _has_npz(names):
                raise ValueError(f"cannot tell the feature format of directory {path}: it holds no .npz, .npy or .tsv files")
            return "npz", path
        raise ValueError(f"format={format!r} takes a file, but {path} is a directory")
    if format == "npz":
        raise ValueError(f"format='npz' takes a directory of per-image files, but {path} is a file")
    if format != "auto":
        return format, path
    with open(path, "rb") as handle:
        if handle.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
            return "hdf5", path
    if ".tsv" in path.name:
        return "tsv", [path]
    if path.suffix in (".h5", ".hdf5", ".hdf"):
        return "hdf5", path
    raise ValueError(f"cannot tell the feature format of {path}; pass format='tsv' or 'hdf5'")


def _has_npz(names):
    return any(name.endswith((".npz", ".npy")) for name in names)


def open_feature_reader(source, format="auto", box_dir=None, image_sizes=None, image_ids=None):
    """The reader for `source` (see the module docstring); iterate it, or call `read(image_id)` (npz, hdf5)."""
    format, paths = _resolve_source(source, format)
    if format == "npz":
        return NpzFeatureReader(paths, box_dir=box_dir, image_sizes=image_sizes, image_ids=image_ids)
    if box_dir is not None:
        raise ValueError(f"box_dir applies to the npz layout only, not {format!r}")
    if format == "hdf5":
        return HDF5FeatureReader(paths, image_sizes=image_sizes, image_ids=image_ids)
    return TSVFeatureReader(paths, image_sizes=image_sizes)


def iter_feature_records(source, format="auto", box_dir=None, image_sizes=None, image_ids=None):
    """Yield the record of every image of `source` (or of `image_ids`), in store order. A bad image raises
    `FeatureStoreError` naming its id."""
    reader = open_feature_reader(source, format, box_dir=box_dir, image_sizes=image_sizes, image_ids=image_ids)
    try:
        if isinstance(reader, TSVFeatureReader):
            yield from reader.records(None if image_ids is None else set(_normalise_ids(image_ids)))
            return
        for image_id in reader.ids():
            try:
                yield reader.read(image_id)
            except FeatureRecordError as error:
                raise FeatureStoreError(f"image {image_id}: {error}", {image_id: str(error)}) from None
    finally:
        reader.close()


# ----------------------------------------------------------------------------------------------------------
# writing shards (run in this process or in worker processes)


def store_features(feature_size: int, dtype: str = "float32"):
    """The fixed schema of a feature store (`datasets.Features`)."""
    datasets = _import_datasets()
    return datasets.Features(
        {
            "image_id": datasets.Value("string"),
            "region_features": datasets.Array2D(shape=(None, feature_size), dtype=dtype),
            "region_boxes": datasets.Array2D(shape=(None, 4), dtype="float32"),
            "region_boxes_raw": datasets.Array2D(shape=(None, 4), dtype="float32"),
            "image_width": datasets.Value("int32"),
            "image_height": datasets.Value("int32"),
            "num_regions": datasets.Value("int32"),
        }
    )


def _row(record, dtype, feature_size):
    features = record["region_features"]
    if features.shape[1] != feature_size:
        raise FeatureRecordError(f"{features.shape[1]} features per region, the store has {feature_size}")
    if dtype == "float16":
        if features.size and float(np.abs(features).max()) > _FLOAT16_MAX:
            raise FeatureRecordError("region features overflow float16; convert with dtype='float32'")
        features = features.astype(np.float16)
    row = dict(record)
    row["region_features"] = features
    row["num_regions"] = features.shape[0]
    return {column: row[column] for column in STORE_COLUMNS}


_WORKER_STATE: dict = {}


def _init_worker(state):
    _WORKER_STATE.clear()
    _WORKER_STATE.update(state)


def _run_job(job, state=None, progress=None) -> dict:
    """Write one shard to `<shards>/<name>.arrow` (through a `.tmp` file) and say what it holds."""
    from datasets.arrow_writer import ArrowWriter

    state = _WORKER_STATE if state is None else state
    reader, dtype, feature_size = state["reader"], state["dtype"], state["feature_size"]
    final = Path(state["shards_dir"]) / f"{job['name']}.arrow"
    temporary = final.with_name(final.name + ".tmp")
    bad, rows, with_boxes = {}, 0, 0
    if job["kind"] == "ids":
        items = _read_ids(reader, job["ids"])
        span = None
    else:
        span = reader.span(job["file_index"], job["start"], job["max_records"], state.get("wanted"))
        items = span
    with ArrowWriter(features=state["features"], path=str(temporary), writer_batch_size=_WRITER_BATCH_SIZE) as writer:
        for image_id, record, error, amount in items:
            if record is not None and error is None:
                try:
                    row = _row(record, dtype, feature_size)
                except FeatureRecordError as row_error:
                    error = str(row_error)
                else:
                    writer.write(row)
                    rows += 1
                    with_boxes += row["region_boxes"] is not None
            if error is not None:
                bad[image_id] = error
            if progress is not None:
                progress(amount)
        writer.finalize()
    os.replace(temporary, final)
    result = {"file": final.name, "rows": rows, "with_boxes": with_boxes, "bad": bad}
    if span is not None:
        result.update(start=job["start"], end=span.end, eof=span.eof)
    return result


def _read_ids(reader, image_ids):
    for image_id in image_ids:
        try:
            yield image_id, reader.read(image_id), None, 1
        except FeatureRecordError as error:
            yield image_id, None, str(error), 1


def _execute(jobs, on_done, state, num_proc, progress):
    """Run `jobs` (more may follow: `on_done(job, result)` returns them) here or in `num_proc` processes."""
    queue = deque(jobs)
    if num_proc <= 1:
        while queue:
            job = queue.popleft()
            queue.extend(on_done(job, _run_job(job, state, progress)))
        return
    context = multiprocessing.get_context("spawn")  # a fork of a process holding torch or arrow threads can hang
    with ProcessPoolExecutor(num_proc, mp_context=context, initializer=_init_worker, initargs=(state,)) as executor:
        running = {}
        try:
            while queue or running:
                while queue and len(running) < 2 * num_proc:
                    job = queue.popleft()
                    running[executor.submit(_run_job, job)] = job
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    job = running.pop(future)
                    result = future.result()
                    progress(job["amount"] if job["kind"] == "ids" else result["end"] - result["start"])
                    queue.extend(on_done(job, result))
        except BaseException:
            executor.shutdown(wait=True, cancel_futures=True)
            raise


# ----------------------------------------------------------------------------------------------------------
# the conversion


def _work_dir(output_dir: Path) -> Path:
    return output_dir.with_name(f".{output_dir.name}.incomplete")


def _write_json_atomically(path: Path, value):
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=1, sort_keys=True)
    os.replace(temporary, path)


def _check_options(dtype, on_error, num_proc, shard_size):
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {STORAGE_DTYPES}, not {dtype!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if not isinstance(num_proc, int) or num_proc < 1:
        raise ValueError(f"num_proc must be a positive integer, not {num_proc!r}")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive integer, not {shard_size!r}")


def convert_feature_store(
    source,
    output_dir,
    format: str = "auto",
    dtype: str = "float32",
    image_ids: Iterable | None = None,
    num_proc: int = 1,
    resume: bool = True,
    on_error: str = "raise",
    image_sizes: Mapping | None = None,
    box_dir=None,
    shard_size: int = 1000,
    overwrite: bool = False,
    progress: bool = True,
) -> str:
    """Convert a region-feature store into a `datasets` data set at `output_dir`; return its path.

    Args:
        source: a directory of ``.npz``/``.npy`` files, a TSV file (or a list of them, or a directory of them),
            or an HDF5 file; see the module docstring.
        format: ``"auto"`` (from the path and the file signature), ``"npz"``, ``"tsv"`` or ``"hdf5"``.
        dtype: storage type of the region features, ``"float32"`` or ``"float16"`` (half the disk; features
            are read back as float32 either way). Boxes are always float32.
        image_ids: only these images (in this order for npz/hdf5); ids with no features count as bad.
        num_proc: worker processes (shards of npz/hdf5 in parallel; TSV files in parallel).
        resume: reuse the finished shards of an interrupted run with the same settings; False starts over.
        on_error: ``"raise"`` (a `FeatureStoreError` listing every bad image id) or ``"skip"`` (leave them out,
            list them in ``<output_dir>/skipped_image_ids.txt``).
        image_sizes: ``{image_id: (width, height)}`` for sources that lack the size (box normalisation).
        box_dir: the npz layout's box directory (default: the ``*_box`` sibling of a ``*_att`` directory).
        shard_size: images (TSV: lines) per shard, the unit of resumption.
        overwrite: replace an existing store at `output_dir`.
        progress: show a tqdm bar.

    A complete store already at `output_dir` made from the same source with the same settings is returned as
    is (when `resume`); another one raises `FileExistsError` unless `overwrite`.
    """
    _check_options(dtype, on_error, num_proc, shard_size)
    reader = open_feature_reader(source, format, box_dir=box_dir, image_sizes=image_sizes, image_ids=image_ids)
    extra = {"image_sizes": None if not image_sizes else _digest(sorted((str(k), tuple(v)) for k, v in image_sizes.items()))}
    try:
        return _convert(reader, Path(output_dir), dtype, _normalise_ids(image_ids), num_proc, resume, on_error,
                        shard_size, overwrite, progress, extra)
    finally:
        reader.close()


def write_synthetic_feature_store(
    output_dir,
    num_images: int,
    num_regions: int | tuple = 36,
    feature_size: int = 2048,
    dtype: str = "float16",
    seed: int = 0,
    image_size: tuple = (640, 480),
    shard_size: int = 1000,
    num_proc: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> str:
    """Write a store of `num_images` random images (ids ``"0"``... ``"num_images-1"``) shard by shard: memory
    stays flat at any size (COCO: 123,287 images). `num_regions` is a count or a ``(min, max)`` range; every
    image gets boxes normalised by `image_size` (width, height). Same layout, atomicity and resumption as
    `convert_feature_store`."""
    if not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be a positive integer, not {num_images!r}")
    if isinstance(num_regions, (list, tuple)):
        if len(num_regions) != 2 or not 1 <= num_regions[0] <= num_regions[1]:
            raise ValueError(f"num_regions range must be (min, max) with 1 <= min <= max, not {num_regions!r}")
        num_regions = (int(num_regions[0]), int(num_regions[1]))
    elif not isinstance(num_regions, int) or num_regions < 1:
        raise ValueError(f"num_regions must be a positive integer or a (min, max) range, not {num_regions!r}")
    if not isinstance(feature_size, int) or feature_size < 1:
        raise ValueError(f"feature_size must be a positive integer, not {feature_size!r}")
    _check_options(dtype, "raise", num_proc, shard_size)
    reader = _SyntheticReader(num_images, num_regions, feature_size, seed, tuple(image_size))
    return _convert(reader, Path(output_dir), dtype, None, num_proc, True, "raise", shard_size, overwrite, progress, {})


def _convert(reader, output_dir, dtype, image_ids, num_proc, resume, on_error, shard_size, overwrite, progress, extra):
    datasets = _import_datasets()
    fingerprint = dict(reader.fingerprint(), format=reader.format, dtype=dtype, shard_size=shard_size, **extra)
    indexed = not isinstance(reader, TSVFeatureReader)
    all_ids = reader.ids() if indexed else None
    fingerprint["image_ids"] = _digest(all_ids if indexed else (image_ids or []))

    if output_dir.exists():
        existing = _read_metadata(output_dir)
        if existing is not None and resume and not overwrite and existing.get("fingerprint") == fingerprint:
            logger.info("%s already holds this feature store; nothing to do", output_dir)
            return str(output_dir)
        if not overwrite:
            raise FileExistsError(
                f"{output_dir} already exists; pass overwrite=True to replace it, or load it with load_feature_store"
            )
    work_dir = _work_dir(output_dir)
    manifest_path = work_dir / _MANIFEST
    manifest = None
    if work_dir.exists() and resume and manifest_path.is_file():
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
        if manifest.get("fingerprint") != fingerprint:
            changed = sorted(k for k in set(fingerprint) | set(manifest.get("fingerprint", {}))
                             if fingerprint.get(k) != manifest.get("fingerprint", {}).get(k))
            raise ValueError(
                f"the interrupted conversion in {work_dir} was made from another source or with other settings "
                f"(differs in: {', '.join(changed)}); pass resume=False to start over"
            )
    elif work_dir.exists():
        shutil.rmtree(work_dir)
    shards_dir = work_dir / "shards"
    shards_dir.mkdir(parents=True, exist_ok=True)
    if manifest is None:
        manifest = {"format_version": _FORMAT_VERSION, "fingerprint": fingerprint, "feature_size": None, "shards": {}}

    feature_size = manifest["feature_size"] or getattr(reader, "feature_size", None)
    if feature_size is None:
        feature_size = _peek_feature_size(reader, all_ids, image_ids)
    if feature_size is None:
        raise ValueError(f"no image of {_describe(reader)} has readable region features")
    manifest["feature_size"] = feature_size
    _write_json_atomically(manifest_path, manifest)

    shards = manifest["shards"]

    def reusable(name):
        entry = shards.get(name)
        return (
            entry is not None
            and (shards_dir / entry["file"]).is_file()
            and (not entry["bad"] or on_error == "skip")
        )

    def record(job, result):
        result["order"] = job["order"]
        shards[job["name"]] = result
        _write_json_atomically(manifest_path, manifest)

    jobs, done_amount = [], 0
    if indexed:
        total = len(all_ids)
        for index, start in enumerate(range(0, total, shard_size)):
            name = f"shard-{index:06d}"
            chunk = all_ids[start : start + shard_size]
            if reusable(name):
                done_amount += len(chunk)
            else:
                jobs.append({"kind": "ids", "name": name, "order": [0, index], "ids": chunk, "amount": len(chunk)})

        def on_done(job, result):
            record(job, result)
            return []

    else:
        sizes = reader.file_sizes()
        total = sum(sizes)

        def tsv_job(file_index, shard_index, start, chain):
            return {"kind": "tsv", "name": f"tsv-{file_index:03d}-{shard_index:06d}", "order": [file_index, shard_index],
                    "file_index": file_index, "start": start, "max_records": shard_size, "chain": chain}

        for file_index in range(len(reader.paths)):
            entries = sorted((e for e in shards.values() if e["order"][0] == file_index), key=lambda e: e["order"][1])
            for position, entry in enumerate(entries):
                if entry["order"][1] != position or entry["start"] != (entries[position - 1]["end"] if position else 0):
                    raise ValueError(f"the manifest {manifest_path} is inconsistent; pass resume=False to start over")
            for entry in entries:
                name = f"tsv-{file_index:03d}-{entry['order'][1]:06d}"
                if reusable(name):
                    done_amount += entry["end"] - entry["start"]
                else:
                    jobs.append(tsv_job(file_index, entry["order"][1], entry["start"], chain=False))
            if not entries:
                jobs.append(tsv_job(file_index, 0, 0, chain=True))
            elif not entries[-1]["eof"]:
                jobs.append(tsv_job(file_index, len(entries), entries[-1]["end"], chain=True))

        def on_done(job, result):
            record(job, result)
            if job["chain"] and not result["eof"]:
                return [tsv_job(job["file_index"], job["order"][1] + 1, result["end"], chain=True)]
            return []

    state = {
        "reader": reader,
        "dtype": dtype,
        "feature_size": feature_size,
        "features": store_features(feature_size, dtype),
        "shards_dir": str(shards_dir),
        "wanted": None if indexed or image_ids is None else set(image_ids),
    }
    unit = {"unit": "img"} if indexed else {"unit": "B", "unit_scale": True}
    with tqdm(total=total, initial=done_amount, desc=f"{reader.format} -> {output_dir.name}", disable=not progress, **unit) as bar:
        _execute(jobs, on_done, state, num_proc, bar.update)

    return _finish(reader, output_dir, work_dir, manifest, shards_dir, image_ids, on_error, progress, datasets)


def _peek_feature_size(reader, all_ids, image_ids):
    if isinstance(reader, TSVFeatureReader):
        wanted = None if image_ids is None else set(image_ids)
        for file_index in range(len(reader.paths)):
            for _, record, _, _ in reader.span(file_index, 0, 2**62, wanted):
                if record is not None:
                    return record["region_features"].shape[1]
        return None
    for image_id in all_ids:
        try:
            return reader.read(image_id)["region_features"].shape[1]
        except FeatureRecordError:
            continue
    return None


def _describe(reader):
    return f"{reader.format} source {reader.fingerprint()['source']}"


def _finish(reader, output_dir, work_dir, manifest, shards_dir, image_ids, on_error, progress, datasets):
    entries = sorted(manifest["shards"].values(), key=lambda entry: entry["order"])
    bad = {}
    for entry in entries:
        bad.update(entry["bad"])
    parts = [datasets.Dataset.from_file(str(shards_dir / entry["file"])) for entry in entries]
    stored_ids = [image_id for part in parts for image_id in part.data.column("image_id").to_pylist()]
    if image_ids is not None and isinstance(reader, TSVFeatureReader):
        found = set(stored_ids) | set(bad)
        for image_id in image_ids:
            if image_id not in found:
                bad[image_id] = "not in the TSV files"
    if bad and on_error == "raise":
        raise FeatureStoreError(
            f"{len(bad)} image(s) of {_describe(reader)} have missing or unusable region features:\n"
            + _list_bad(bad)
            + f"\nFix them and re-run (the finished shards in {work_dir} are reused), or pass on_error='skip' to "
            f"leave them out (their ids go to {output_dir / SKIPPED_FILE}).",
            bad,
        )
    seen, duplicates = set(), []
    for image_id in stored_ids:
        if image_id in seen:
            duplicates.append(image_id)
        seen.add(image_id)
    if duplicates:
        raise ValueError(f"{len(duplicates)} image id(s) occur more than once in {_describe(reader)}: "
                         f"{sorted(set(duplicates))[:_NUMBER_OF_BAD_IDS_SHOWN]}")
    if not stored_ids:
        raise ValueError(f"no image of {_describe(reader)} has readable region features")

    staging = work_dir / "dataset"
    if staging.exists():
        shutil.rmtree(staging)
    dataset = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    bars_were_on = datasets.is_progress_bar_enabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        dataset.save_to_disk(str(staging), max_shard_size="1GB")
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    if bad:
        with open(staging / SKIPPED_FILE, "w", encoding="utf-8") as handle:
            for image_id, reason in bad.items():
                handle.write(f"{image_id}\t{reason}\n")
        logger.warning("left out %d image(s) with bad features; see %s", len(bad), output_dir / SKIPPED_FILE)
    metadata = {
        "format_version": _FORMAT_VERSION,
        "source_format": reader.format,
        "source": manifest["fingerprint"]["source"],
        "dtype": manifest["fingerprint"]["dtype"],
        "feature_size": manifest["feature_size"],
        "num_images": len(stored_ids),
        "num_with_normalized_boxes": sum(entry["with_boxes"] for entry in entries),
        "num_skipped": len(bad),
        "fingerprint": manifest["fingerprint"],
    }
    _write_json_atomically(staging / METADATA_FILE, metadata)
    del dataset, parts
    if output_dir.exists():  # overwrite=True was checked before any work
        old = work_dir / "replaced"
        if old.exists():
            shutil.rmtree(old)
        os.rename(output_dir, old)
    os.rename(staging, output_dir)  # the store appears whole, at once
    shutil.rmtree(work_dir, ignore_errors=True)
    return str(output_dir)


def _list_bad(bad: Mapping[str, str]) -> str:
    lines = [f"  {image_id}: {reason}" for image_id, reason in list(bad.items())[:_NUMBER_OF_BAD_IDS_SHOWN]]
    if len(bad) > _NUMBER_OF_BAD_IDS_SHOWN:
        lines.append(f"  ... and {len(bad) - _NUMBER_OF_BAD_IDS_SHOWN} more")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# reading a converted store


def _read_metadata(output_dir: Path):
    path = Path(output_dir) / METADATA_FILE
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def load_feature_store(output_dir, format: str | None = "numpy"):
    """The store written by `convert_feature_store` as a memory-mapped `datasets.Dataset`, formatted for
    ``"numpy"`` (features come back as float32 arrays), ``"torch"``, or None (python lists)."""
    if format not in ("numpy", "torch", None):
        raise ValueError(f"format must be 'numpy', 'torch' or None, not {format!r}")
    output_dir = Path(output_dir)
    if _read_metadata(output_dir) is None:
        hint = ""
        if _work_dir(output_dir).exists():
            hint = "; the conversion into it was interrupted: re-run convert_feature_store (resume=True) to finish it"
        if output_dir.exists():
            raise FileNotFoundError(f"{output_dir} is not a feature store (no {METADATA_FILE}){hint}")
        raise FileNotFoundError(f"feature store {output_dir} does not exist{hint}")
    dataset = _import_datasets().load_from_disk(str(output_dir))
    return dataset.with_format(format) if format else dataset


def _array2d(column):
    """The (rows, width) float32 array of a one-row slice of an Array2D storage column, or None when null."""
    array = column.combine_chunks() if hasattr(column, "combine_chunks") else column  # chunked or plain
    if array.null_count:
        return None
    rows = array.flatten()  # list of rows -> the rows of this image
    values = rows.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(rows), -1).astype(np.float32)  # a writable copy, never a view of the memory map


def read_skipped_image_ids(output_dir) -> dict[str, str]:
    """The images a ``on_error="skip"`` conversion left out: ``{image_id: reason}`` (empty if none)."""
    path = Path(output_dir) / SKIPPED_FILE
    if not path.is_file():
        return {}
    skipped = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            image_id, _, reason = line.rstrip("\n").partition("\t")
            skipped[image_id] = reason
    return skipped


class _PositionedFile:
    """One Arrow file of a store: `table`, its rows, memory-mapped (zero-copy: every buffer of `table` lies inside the
    map, `location` gives its file offset without reading it), and `read` for positioned reads (os.pread, which
    needs no file position: forked DataLoader workers may share the descriptor). Closed when the object goes."""

    def __init__(self, path):
        import pyarrow as pa

        self.path = str(path)
        mapped = pa.memory_map(self.path).read_buffer()  # the whole file, mapped: nothing is read yet
        self.base, self.size = mapped.address, mapped.size
        self.table = pa.ipc.open_stream(mapped).read_all()  # reads the batches' metadata; buffers are slices
        self.fd = os.open(self.path, os.O_RDONLY)
        weakref.finalize(self, os.close, self.fd)

    def location(self, buffer):
        """The file offset of `buffer` (an Arrow buffer of `table`), or None when it is not inside the map."""
        if buffer is None:
            return None
        start = buffer.address - self.base
        return start if 0 <= start <= self.size - buffer.size else None

    def read(self, start: int, size: int) -> bytes:
        chunks = []
        while size > 0:  # a regular file gives all that is asked for unless it ends first
            chunk = os.pread(self.fd, size, start)
            if not chunk:
                raise OSError(f"{self.path} ends before byte {start + size}: did the feature store change on disk?")
            chunks.append(chunk)
            start, size = start + len(chunk), size - len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _PreadColumn:
    """One column of one record batch of a `_PositionedFile`, its cells read with os.pread: the file offsets of
    its Arrow buffers are found once from their addresses in the map, so reading a cell touches no page of the map.
    Kinds read this way: integers and floats, strings, list<list<number>> (Array2D storage) without nulls inside
    a cell; anything else (never in a store this module writes) is read through the map."""

    def __init__(self, array, file):
        import pyarrow as pa

        self.array, self.file, self.kind = array, file, None
        kind, buffers = array.type, array.buffers()
        self.nested = pa.types.is_list(kind) or pa.types.is_large_list(kind)
        self.offset = array.offset
        self.validity = file.location(buffers[0]) if array.null_count else None  # known from the batch's metadata
        if array.null_count and self.validity is None:
            return
        if pa.types.is_integer(kind) or pa.types.is_floating(kind):
            self.dtype, self.data = np.dtype(kind.to_pandas_dtype()), file.location(buffers[1])
            self.kind = "number" if self.data is not None else None
        elif kind == pa.string():
            self.offsets, self.data = file.location(buffers[1]), file.location(buffers[2])
            self.kind = "string" if None not in (self.offsets, self.data) else None
        elif pa.types.is_list(kind) and pa.types.is_list(kind.value_type) and (
                pa.types.is_floating(kind.value_type.value_type) or pa.types.is_integer(kind.value_type.value_type)):
            rows, values = array.values, array.values.values  # whole children: the offsets above index them
            if rows.null_count or values.null_count:
                return  # nulls inside a cell
            self.dtype = np.dtype(values.type.to_pandas_dtype())
            self.offsets, self.rows_offset = file.location(buffers[1]), rows.offset
            self.rows_offsets = file.location(rows.buffers()[1])
            self.values_offset, self.data = values.offset, file.location(values.buffers()[1])
            self.kind = "array2d" if None not in (self.offsets, self.rows_offsets, self.data) else None

    def _pair(self, start, index):  # offsets[index], offsets[index + 1] of an int32 offsets buffer at `start`
        first, last = np.frombuffer(self.file.read(start + 4 * index, 8), dtype="<i4")
        return int(first), int(last)

    def cell(self, index: int):
        """Row `index` of the column: None (null), a Python int/float/str, or a (rows, width) float32 array."""
        if self.kind is None:
            cell = self.array.slice(index, 1)
            return _array2d(cell) if self.nested else cell[0].as_py()
        index += self.offset
        if self.validity is not None and not self.file.read(self.validity + index // 8, 1)[0] >> (index % 8) & 1:
            return None
        if self.kind == "number":
            data = self.file.read(self.data + index * self.dtype.itemsize, self.dtype.itemsize)
            return np.frombuffer(data, dtype=self.dtype)[0].item()
        first, last = self._pair(self.offsets, index)
        if self.kind == "string":
            return self.file.read(self.data + first, last - first).decode("utf-8")
        count = last - first  # rows of this cell, then where their values start and end
        ends = np.frombuffer(self.file.read(self.rows_offsets + 4 * (self.rows_offset + first), 4 * (count + 1)), "<i4")
        widths = np.diff(ends)
        if count == 0 or (widths != widths[0]).any():  # no rows, or ragged rows: not an (N, F) array
            return _array2d(self.array.slice(index - self.offset, 1))
        size = self.dtype.itemsize
        data = self.file.read(self.data + size * (self.values_offset + int(ends[0])), size * int(ends[-1] - ends[0]))
        return np.frombuffer(data, dtype=self.dtype).reshape(count, -1).astype(np.float32)


class _PreadRows:
    """The rows of a data set's Arrow files (`dataset.cache_files`, in order), read the ``access="pread"`` way: the
    map is only used to locate the buffers (Arrow's metadata, one small message per record batch, is parsed from
    it); every cell is copied out of the files with os.pread."""

    def __init__(self, paths):
        import pyarrow as pa

        self.files = [_PositionedFile(path) for path in paths]
        self.starts, self.batches, row = [], [], 0  # first row and {column: _PreadColumn} of each record batch
        for file in self.files:
            for batch in file.table.to_batches():
                columns = {}
                for name in STORE_COLUMNS:
                    column = batch.column(name)
                    column = column.storage if isinstance(column, pa.ExtensionArray) else column
                    columns[name] = _PreadColumn(column, file)
                self.starts.append(row)
                self.batches.append(columns)
                row += batch.num_rows
        self.num_rows = row

    def matches(self, table) -> bool:
        """Whether `table` (a data set's `data`) holds these rows: the same types and record batches, and the same
        image id at the start of each batch. It does unless the data set was changed in memory (cast...) after
        its files were written. Reads nothing of the files but one id per batch."""
        if table.num_rows != self.num_rows:
            return False
        for name in STORE_COLUMNS:
            theirs = table.schema.field(name).type
            if any(columns[name].array.type != getattr(theirs, "storage_type", theirs) for columns in self.batches):
                return False
        ids = table.column("image_id")
        if [len(chunk) for chunk in ids.chunks] != [len(columns["image_id"].array) for columns in self.batches]:
            return False
        return all(ids[start].as_py() == batch["image_id"].cell(0) for start, batch in zip(self.starts, self.batches))

    def row(self, index: int) -> dict:
        number = bisect.bisect_right(self.starts, index) - 1
        index -= self.starts[number]
        return {name: column.cell(index) for name, column in self.batches[number].items()}


FEATURE_STORE_ACCESS = ("pread", "mmap")


class FeatureStore(Mapping):
    """A converted store looked up by image id: ``store["391895"]`` is that image's record, with
    ``region_features`` (N, F) float32, ``region_boxes`` (N, 4) normalised or None, ``region_boxes_raw``,
    ``image_width``/``image_height`` (None when unknown) and ``num_regions``. Rows stay on disk; only the
    id -> row index lives in memory. Integer ids are accepted (``store[391895]``).

    `access` is how rows are read from the store's Arrow files:

    - ``"pread"`` (default): each cell is copied out of the files with positioned reads (os.pread) into memory
      the caller owns. The files are memory-mapped only to locate their buffers (Arrow's metadata, one small
      message per record batch of hundreds of images, is read from the map when the store is opened); no page
      of a row is read through it. The files' pages stay in the kernel's page cache (shared, dropped under memory
      pressure), but none stays mapped into this process, so its resident memory (RSS) does not grow with the
      store, nor with how much of it a run has read.
    - ``"mmap"``: through the memory map, as `datasets` reads. Every page touched (and the readahead around it)
      stays mapped and counts in RSS until the kernel needs the memory back: over an epoch, RSS grows towards the
      size of the store (18 GB for COCO's 123,287 images of 36 x 2048 float16).

    benchmarks/RESULTS.md has both measured on a COCO-size store. Where ``"pread"`` cannot be used (no os.pread,
    i.e. Windows; a data set held in memory; a data set whose rows are no longer those of its files, e.g. selected
    and concatenated: a warning says so), rows are read the ``"mmap"`` way; `access` says which
    way is in effect."""

    def __init__(self, store, format: str = "numpy", access: str = "pread"):
        datasets = _import_datasets()
        if format not in ("numpy", "torch"):
            raise ValueError(f"format must be 'numpy' or 'torch', not {format!r}")
        if access not in FEATURE_STORE_ACCESS:
            raise ValueError(f"access must be 'pread' or 'mmap', not {access!r}")
        if isinstance(store, datasets.Dataset):
            self.path, self.metadata, dataset = None, {}, store
        else:
            self.path = Path(store)
            dataset = load_feature_store(self.path, format=None)
            self.metadata = _read_metadata(self.path)
        missing = [column for column in STORE_COLUMNS if column not in dataset.column_names]
        if missing:
            raise ValueError(f"the data set lacks the feature store columns {missing}")
        self.format = format
        self.dataset = dataset.with_format(format)
        # a select()/shuffle()d data set reads its rows through an indices mapping (datasets keeps it in _indices)
        indices = getattr(dataset, "_indices", None)
        self._physical_rows = None if indices is None else indices.column(0).to_numpy()
        self._columns = self._pread = None
        ids = dataset.with_format("arrow")["image_id"].to_pylist()
        self._index = {image_id: row for row, image_id in enumerate(ids)}
        if len(self._index) != len(ids):
            raise ValueError("the feature store holds an image id more than once")
        self.access = "mmap"
        if access == "pread" and hasattr(os, "pread") and self.dataset.cache_files:
            if self._pread_rows().matches(self.dataset.data):
                self.access = "pread"
            else:
                self._pread = None
                logger.warning("the data set's rows are not those of its Arrow files (taken or changed in memory?): "
                               "they are read through the memory map (access='mmap')")

    def _pread_rows(self) -> _PreadRows:
        if self._pread is None:  # at first use, and after unpickling (the files were checked when the store was made)
            self._pread = _PreadRows([entry["filename"] for entry in self.dataset.cache_files])
        return self._pread

    def _storage_columns(self):
        """The store's columns as plain Arrow arrays over the memory map, the Array2D extension type unwrapped
        once: slicing them costs no type reconstruction, so a lookup is several times faster than the datasets
        numpy formatter."""
        if self._columns is None:
            import pyarrow as pa

            table = self.dataset.data
            self._columns = {}
            for name in STORE_COLUMNS:
                column = table.column(name)
                if name in _ARRAY_COLUMNS:
                    column = pa.chunked_array([chunk.storage for chunk in column.chunks], type=column.type.storage_type)
                self._columns[name] = column
        return self._columns

    def __getstate__(self):  # Arrow arrays would pickle their data, descriptors cannot; the data set pickles as paths
        state = dict(self.__dict__)
        state["_columns"] = state["_pread"] = None
        return state

    @property
    def image_ids(self) -> list[str]:
        return list(self._index)

    @property
    def feature_size(self) -> int:
        return int(self.dataset.features["region_features"].shape[1])

    def index_of(self, image_id) -> int:
        """The row of `image_id` in `dataset`."""
        try:
            return self._index[str(image_id)]
        except KeyError:
            where = f" ({self.path})" if self.path else ""
            raise KeyError(f"image id {str(image_id)!r} is not in the feature store{where}") from None

    def __getitem__(self, image_id) -> dict:
        return self.row(self.index_of(image_id))

    def row(self, index: int) -> dict:
        """The record at row `index` of `dataset`."""
        index = int(index)
        if not 0 <= index < len(self._index):
            raise IndexError(f"row {index} is out of range for a feature store of {len(self._index)} images")
        if self._physical_rows is not None:
            index = int(self._physical_rows[index])
        if self.access == "pread":
            record = self._pread_rows().row(index)
        else:
            record = {}
            for name, column in self._storage_columns().items():
                value = column.slice(index, 1)
                record[name] = _array2d(value) if name in _ARRAY_COLUMNS else value[0].as_py()
        if self.format == "torch":
            import torch

            for name in _ARRAY_COLUMNS:
                if record[name] is not None:
                    record[name] = torch.from_numpy(record[name])
        return record

    def __contains__(self, image_id) -> bool:
        return str(image_id) in self._index

    def __iter__(self):
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self):
        where = f"{self.path}, " if self.path else ""
        return f"FeatureStore({where}{len(self)} images, feature_size={self.feature_size}, access={self.access!r})"
