"""Image retrieval with a trained `HMLSTMModel` over a folder of raw images (inference only).

    model, processor = load_retrieval_model("outputs/quickstart/hmlstm/best")
    index, counts = index_folder(model, processor, "photos/", "photos.safetensors")   # extract, embed, save
    index = RetrievalIndex.load("photos.safetensors", expected_fingerprint=model_fingerprint(model, processor))
    hits, query = search_index(index, model, processor, "a red circle next to a blue star", top_k=8)
    ranked = annotate_image(model, processor, "scene.png", ["a red star", "two blue squares"])
    draw_sheet([SheetCell(image, "#1 0.73", outlines)], "sheet.png", title=..., phrases=[...])

Indexing: every image file of a folder (`IMAGE_SUFFIXES`) goes through the region extractor the processor
describes (`processor.region_extractor`, a `RegionFeatureExtractor.to_dict()`), then the processor and
`model.embed_images`. The index keeps, per image, the image embedding, the embeddings of its valid regions, their
normalised boxes (x1 y1 x2 y2 in [0, 1]) and detector labels, the file path, its SHA-256 and the image size.

Index file (decision): one safetensors file. Tensors: `image_embeds` (I, E) float32, `region_embeds` (I, N, E)
float32 (zeros at padding), `region_mask` (I, N) uint8, `region_boxes` (I, N, 4) float32, `image_sizes` (I, 2)
int64 (width, height). The safetensors header metadata holds one JSON document under `METADATA_KEY`: the format
version, the model fingerprint, the model's `hierarchical` switch, the region extractor description and, per image,
its path (relative to the index file's folder, so a folder moved with its index still resolves), SHA-256 and
region labels. Written to a temporary file and renamed over the old one (atomic); no pickle anywhere.

Model fingerprint (`model_fingerprint`): SHA-256 over the model config (minus bookkeeping keys such as
`transformers_version`), every weight (name, dtype, shape, bytes) and the processor's image settings
(`region_extractor`, `max_regions`, `region_feature_size`): what the stored embeddings depend on. An index built
with another fingerprint is refused (`IndexMismatchError`). Re-indexing a folder with the same model embeds only
the images that are new or whose bytes changed and drops those no longer there.

Scores: a sentence ranks images by `cos(image, sentence)` (hierarchical and flat models alike); each phrase of the
sentence (`processor.phrases`, hierarchical model only) is matched, in every image, to the valid region with the
highest `cos(phrase, region)` (the region behind the model's phrase-image score `max_i cos(p, r_i)`). Ties keep
the lower index (image order of the index, region order of the extractor).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from .arguments import positive_int
from .image_regions import load_image
from .retrieval_evaluation import embed_texts, model_device_dtype, pad_first_axis, to_model, to_numpy
from .tokenization_glied import split_caption

__all__ = [
    "FLAT_MODEL_NOTE",
    "IMAGE_SUFFIXES",
    "INDEX_FILE_NAME",
    "INDEX_FORMAT_VERSION",
    "METADATA_KEY",
    "Hit",
    "IndexMismatchError",
    "PhraseMatch",
    "RANK_BY",
    "Query",
    "RetrievalIndex",
    "SheetCell",
    "annotate_image",
    "draw_sheet",
    "embed_query",
    "embed_raw_images",
    "format_table",
    "index_folder",
    "list_images",
    "load_retrieval_model",
    "model_fingerprint",
    "phrase_region_matches",
    "region_extractor_of",
    "resolve_index_path",
    "search_index",
]

INDEX_FORMAT_VERSION = 1
INDEX_FILE_NAME = "retrieval_index.safetensors"
METADATA_KEY = "glied_retrieval_index"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FLAT_MODEL_NOTE = "flat model (config.hierarchical=False): no phrase embeddings, so no phrase outlines"
# config keys that say how a model was saved, not what it computes
_BOOKKEEPING_KEYS = {"transformers_version", "architectures", "auto_map", "dtype", "torch_dtype"}


class IndexMismatchError(ValueError):
    """The index was built with another model (or other image settings) than the one given."""


# ------------------------------------------------------------------------------------------------ the model


def load_retrieval_model(model_dir, device="cpu"):
    """`(model, processor)` of a saved HM-LSTM folder, or of a Hub repository id ("user/name", downloaded once into
    the Hub cache), the model in eval mode on `device`, checked against each other (`processor.check_model_config`)."""
    from modeling_glied.modeling_hmlstm import HMLSTMModel

    from .processing_hmlstm import HMLSTMProcessor

    folder = Path(model_dir)
    if not folder.is_dir():
        if folder.exists() or len(folder.parts) != 2 or str(model_dir).startswith((".", "/")):
            raise FileNotFoundError(f"model folder not found: {folder}")
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError

        try:
            folder = Path(snapshot_download(str(model_dir)))
        except (HfHubHTTPError, OSError, ValueError) as error:
            raise FileNotFoundError(f"model folder not found: {model_dir}, and it is no Hub repository that can be "
                                    f"downloaded ({type(error).__name__}: {error})") from None
    for name in ("config.json", "processor_config.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} holds no {name}: not a saved HM-LSTM model with its processor "
                                    "(model.save_pretrained and processor.save_pretrained into one folder)")
    processor = HMLSTMProcessor.from_pretrained(str(folder))
    model = HMLSTMModel.from_pretrained(str(folder)).to(device).eval()
    processor.check_model_config(model.config)
    return model, processor


def model_fingerprint(model, processor):
    """Hex SHA-256 (16 characters) of what stored image embeddings depend on: the model config (without
    bookkeeping keys), every weight, and the processor's image settings."""
    digest = hashlib.sha256()
    config = {key: value for key, value in model.config.to_dict().items()
              if key not in _BOOKKEEPING_KEYS and not key.startswith("_")}
    images = {"region_extractor": processor.region_extractor, "max_regions": processor.max_regions,
              "region_feature_size": processor.region_feature_size}
    digest.update(json.dumps({"config": config, "images": images}, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tensor.numel()};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def region_extractor_of(processor, device="cpu"):
    """The `RegionFeatureExtractor` that `processor.region_extractor` describes (how the model's training images
    became region features), checked against the processor's feature width; a ValueError saying how to set it when
    the processor has none."""
    extractor = processor.build_region_extractor(device)
    if extractor is None:
        raise ValueError(
            "the processor has no region_extractor setting, so raw images cannot become region features. Set it "
            "to the extractor the model was trained with and save the processor next to the model, e.g. "
            "processor.region_extractor = RegionFeatureExtractor(detector='components', backbone='pixels', "
            "max_regions=8).to_dict(); processor.save_pretrained(MODEL_DIR)"
        )
    return extractor


@torch.no_grad()
def embed_raw_images(model, processor, extractor_outputs):
    """Embed the outputs of a `RegionFeatureExtractor` (one dict per image) as one batch.

    Returns `(image_embeds (B, E), regions)`, float32 numpy; `regions[b]` is a dict with the image's kept regions
    (the first `processor.max_regions`): "embeds" (N_b, E), "boxes" (N_b, 4) normalised, "labels" [N_b].
    """
    inputs = processor(region_features=[o["region_features"] for o in extractor_outputs],
                       region_boxes=[o["region_boxes"] for o in extractor_outputs])
    device, dtype = model_device_dtype(model)
    tensors = to_model({key: inputs[key] for key in ("region_features", "region_mask", "region_boxes")},
                        device, dtype)
    image_embeds, region_embeds = model.embed_images(tensors["region_features"], tensors["region_mask"],
                                                     tensors["region_boxes"])
    region_embeds, valid = to_numpy(region_embeds), inputs["region_mask"].bool().numpy()
    boxes = inputs["region_boxes"].to(torch.float32).numpy()
    regions = []
    for row, output in enumerate(extractor_outputs):
        kept = valid[row]
        regions.append({"embeds": region_embeds[row][kept], "boxes": boxes[row][kept],
                        "labels": list(output.get("labels", ["region"] * len(kept)))[:int(kept.sum())]})
    return to_numpy(image_embeds), regions


# ------------------------------------------------------------------------------------------------ the index


def resolve_index_path(path):
    """The index file of `path`: the path itself when it ends in `.safetensors`, else `path/INDEX_FILE_NAME`."""
    path = Path(path)
    return path if path.suffix == ".safetensors" else path / INDEX_FILE_NAME


def list_images(folder, recursive=False):
    """The image files (`IMAGE_SUFFIXES`, any case) of `folder`, sorted; `recursive` looks into sub-folders."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = folder.rglob("*") if recursive else folder.iterdir()
    images = sorted(path for path in files if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}"
                         + ("" if recursive else " (sub-folders are not searched without recursive)"))
    return images


def _file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class RetrievalIndex:
    """Embedded images (numpy, float32, CPU). I images, N the most regions of one image, E the embedding width.

    paths: [I] absolute image paths; sha256: [I] file hashes; image_sizes: (I, 2) width, height in pixels;
    image_embeds: (I, E); region_embeds: (I, N, E), zeros at padding; region_mask: (I, N) bool;
    region_boxes: (I, N, 4) normalised x1 y1 x2 y2; region_labels: [I] lists of the detector labels of the valid
    regions; fingerprint: `model_fingerprint` of the model that embedded them; hierarchical: its
    `config.hierarchical`; region_extractor: the extractor description used.
    """

    paths: list
    sha256: list
    image_sizes: np.ndarray
    image_embeds: np.ndarray
    region_embeds: np.ndarray
    region_mask: np.ndarray
    region_boxes: np.ndarray
    region_labels: list
    fingerprint: str
    hierarchical: bool
    region_extractor: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.paths)

    def regions_of(self, row):
        """`(embeds (n, E), boxes (n, 4), labels [n])` of the valid regions of image `row`."""
        valid = self.region_mask[row]
        return self.region_embeds[row][valid], self.region_boxes[row][valid], self.region_labels[row]

    @classmethod
    def from_images(cls, paths, sha256, image_sizes, image_embeds, regions, fingerprint, hierarchical,
                    region_extractor):
        """Assemble an index from per-image rows (`regions`: dicts as `embed_raw_images` returns them)."""
        width = image_embeds.shape[1]
        return cls(
            paths=[str(p) for p in paths], sha256=list(sha256),
            image_sizes=np.asarray(image_sizes, np.int64).reshape(-1, 2),
            image_embeds=np.asarray(image_embeds, np.float32).reshape(-1, width),
            region_embeds=pad_first_axis([r["embeds"] for r in regions]),
            region_mask=pad_first_axis([np.ones(len(r["embeds"]), bool) for r in regions], False),
            region_boxes=pad_first_axis([r["boxes"] for r in regions]),
            region_labels=[list(r["labels"]) for r in regions],
            fingerprint=fingerprint, hierarchical=bool(hierarchical), region_extractor=dict(region_extractor or {}))

    def rows(self):
        """Per-image rows (the `regions` dicts of `from_images`), to merge indexes."""
        return [dict(zip(("embeds", "boxes", "labels"), self.regions_of(row))) for row in range(len(self))]

    # -- files ---------------------------------------------------------------------------------------------------
    def save(self, path):
        """Write the index (see the module docstring) atomically; `path` as `resolve_index_path`. Returns the file."""
        from safetensors.numpy import save_file

        path = resolve_index_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        base = path.parent.resolve()
        metadata = {
            "format_version": INDEX_FORMAT_VERSION, "fingerprint": self.fingerprint,
            "hierarchical": self.hierarchical, "region_extractor": self.region_extractor,
            "images": [{"path": os.path.relpath(Path(p).resolve(), base), "sha256": digest, "labels": labels}
                       for p, digest, labels in zip(self.paths, self.sha256, self.region_labels)],
        }
        tensors = {"image_embeds": self.image_embeds.astype(np.float32),
                   "region_embeds": self.region_embeds.astype(np.float32),
                   "region_mask": self.region_mask.astype(np.uint8),
                   "region_boxes": self.region_boxes.astype(np.float32),
                   "image_sizes": self.image_sizes.astype(np.int64)}
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
        try:
            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, temporary,
                      metadata={METADATA_KEY: json.dumps(metadata)})
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path, expected_fingerprint=None):
        """Read an index; with `expected_fingerprint`, raise `IndexMismatchError` when it was built with another
        model."""
        from safetensors import SafetensorError, safe_open

        path = resolve_index_path(path)
        if not path.is_file():
            raise FileNotFoundError(f"retrieval index not found: {path} (build it with the `index` command)")
        try:
            with safe_open(str(path), framework="np") as opened:
                header = (opened.metadata() or {}).get(METADATA_KEY)
                tensors = {name: opened.get_tensor(name) for name in opened.keys()}
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(f"{path} is not a retrieval index (not a readable safetensors file: {error})") from None
        if header is None:
            raise ValueError(f"{path} is a safetensors file but not a retrieval index (no {METADATA_KEY!r} metadata)")
        metadata = json.loads(header)
        if metadata.get("format_version", 0) > INDEX_FORMAT_VERSION:
            raise ValueError(f"{path} has index format {metadata['format_version']}, newer than this code "
                             f"({INDEX_FORMAT_VERSION}); upgrade glied")
        if expected_fingerprint is not None and metadata["fingerprint"] != expected_fingerprint:
            raise IndexMismatchError(
                f"the index {path} was built with another model (fingerprint {metadata['fingerprint']}; this model "
                f"and processor: {expected_fingerprint}): its embeddings do not fit this model. Re-index the images "
                "with this model (the `index` command) or search with the model that built it"
            )
        base = path.parent.resolve()
        images = metadata["images"]
        return cls(paths=[os.path.normpath(base / image["path"]) for image in images],
                   sha256=[image["sha256"] for image in images], image_sizes=tensors["image_sizes"],
                   image_embeds=tensors["image_embeds"], region_embeds=tensors["region_embeds"],
                   region_mask=tensors["region_mask"].astype(bool), region_boxes=tensors["region_boxes"],
                   region_labels=[list(image["labels"]) for image in images], fingerprint=metadata["fingerprint"],
                   hierarchical=bool(metadata["hierarchical"]), region_extractor=metadata.get("region_extractor", {}))


def index_folder(model, processor, folder, index_path, batch_size=32, progress=True, recursive=False,
                 extractor=None):
    """Index the images of `folder` into `index_path` (see `resolve_index_path`) and save it.

    An existing index built with the same fingerprint is updated: images already in it with the same bytes keep
    their rows, new or changed ones are embedded, missing ones are dropped. One with another fingerprint is rebuilt.
    Unreadable image files are skipped with a warning.

    Returns `(index, counts)`, counts = {"embedded", "reused", "dropped", "skipped", "rebuilt" (bool)}.
    """
    positive_int(batch_size, "batch_size")
    files = [path.resolve() for path in list_images(folder, recursive)]
    extractor = extractor or region_extractor_of(processor, model_device_dtype(model)[0])
    fingerprint = model_fingerprint(model, processor)
    index_path = resolve_index_path(index_path)
    previous, rebuilt = None, False
    if index_path.exists():
        try:
            previous = RetrievalIndex.load(index_path, expected_fingerprint=fingerprint)
        except IndexMismatchError:
            rebuilt = True
    known = {} if previous is None else {(p, d): row for row, (p, d) in enumerate(zip(previous.paths,
                                                                                       previous.sha256))}
    old_rows = [] if previous is None else previous.rows()
    hashes = [_file_sha256(path) for path in files]
    entries, todo, skipped = {}, [], []
    for path, digest in zip(files, hashes):
        row = known.get((str(path), digest))
        if row is None:
            todo.append((path, digest))
        else:
            entries[str(path)] = (digest, tuple(previous.image_sizes[row]), previous.image_embeds[row], old_rows[row])
    reused = len(entries)
    bar = tqdm(total=len(todo), desc="indexing", unit="image", disable=not progress or not todo)
    try:
        for start in range(0, len(todo), batch_size):
            chunk, pixels = [], []
            for path, digest in todo[start:start + batch_size]:
                try:
                    pixels.append(load_image(path))
                    chunk.append((path, digest))
                except ValueError as error:
                    warnings.warn(f"skipped: {error}", UserWarning, stacklevel=2)
                    skipped.append(str(path))
            if chunk:
                outputs = extractor(pixels, batch_size=batch_size, progress=False)
                embeds, regions = embed_raw_images(model, processor, outputs)
                for (path, digest), output, embed, region in zip(chunk, outputs, embeds, regions):
                    entries[str(path)] = (digest, output["image_size"], embed, region)
            bar.update(len(todo[start:start + batch_size]))
    finally:
        bar.close()
    if not entries:
        raise ValueError(f"none of the {len(files)} image files of {folder} could be read")
    order = [str(path) for path in files if str(path) in entries]
    index = RetrievalIndex.from_images(
        order, [entries[p][0] for p in order], [entries[p][1] for p in order],
        np.stack([entries[p][2] for p in order]), [entries[p][3] for p in order], fingerprint,
        model.config.hierarchical, extractor.to_dict())
    index.save(index_path)
    dropped = 0 if previous is None else len(set(previous.paths) - set(order))
    counts = {"embedded": len(order) - reused, "reused": reused, "dropped": dropped, "skipped": len(skipped),
              "rebuilt": rebuilt}
    return index, counts


# ------------------------------------------------------------------------------------------------ queries


@dataclass
class Query:
    """One embedded sentence: its text, words, `unknown_words` (encoded as `<unk>`), `sentence_embed` (E,),
    `phrases` [(text, (start, end))] (none in the flat model) and `phrase_embeds` (P, E) or None (flat)."""

    text: str
    words: list
    unknown_words: list
    sentence_embed: np.ndarray
    phrases: list
    phrase_embeds: Optional[np.ndarray]


@dataclass
class PhraseMatch:
    """The region of one image that best matches a phrase: `region` (index among the image's valid regions),
    `score` (cos), `box` (4,) normalised, `label` (detector label)."""

    phrase: str
    region: int
    score: float
    box: np.ndarray
    label: str


@dataclass
class Hit:
    """One ranked item: `rank` (1 = best), `row` (its index in the index or the sentence list), `score`
    (cos(image, sentence)), `name` (the image path or the sentence) and its `matches` (one `PhraseMatch` per phrase
    of the sentence; empty in the flat model)."""

    rank: int
    row: int
    score: float
    name: str
    matches: list


def _sentence_words(texts):
    words = []
    for number, text in enumerate(texts):
        if not isinstance(text, str) or not split_caption(text):
            what = "the query" if len(texts) == 1 else f"sentence {number + 1} of {len(texts)}"
            raise ValueError(f"{what} is empty (no word once punctuation is removed): {text!r}")
        words.append(split_caption(text))
    return words


def embed_query(model, processor, texts, batch_size=128):
    """Embed sentences (a string or a list) with their phrases: one `Query` each (a list for a list)."""
    single = isinstance(texts, str)
    texts = [texts] if single else list(texts)
    if not texts:
        raise ValueError("no sentence to embed")
    word_lists = _sentence_words(texts)
    vocabulary = processor.tokenizer.get_vocab()
    if model.config.hierarchical:
        phrase_lists = [processor.phrases(text) for text in texts]
        sentences, phrases = embed_texts(model, processor, texts, spans=[[s for _, s in p] for p in phrase_lists],
                                         batch_size=batch_size)
    else:
        phrase_lists = [[] for _ in texts]
        sentences, phrases = embed_texts(model, processor, texts, batch_size=batch_size)
    queries = [Query(text=text, words=words, unknown_words=[w for w in words if w not in vocabulary],
                     sentence_embed=sentences[row], phrases=phrase_lists[row],
                     phrase_embeds=None if phrases is None else phrases[row])
               for row, (text, words) in enumerate(zip(texts, word_lists))]
    return queries[0] if single else queries


def phrase_region_matches(phrase_embeds, region_embeds, region_mask=None):
    """For every phrase, the valid region with the highest cosine (ties: the first).

    phrase_embeds: (P, E); region_embeds: (N, E), both L2-normalised; region_mask: (N,) bool (all valid when None).
    Returns `(regions (P,) int64, scores (P,) float32)`: `argmax_i cos(p, r_i)` and its value, the phrase-image
    score `max_i cos(p, r_i)` of `HMLSTMModel.phrase_image_similarity`.
    """
    phrase_embeds = np.asarray(phrase_embeds, np.float32).reshape(-1, np.shape(region_embeds)[-1])
    region_embeds = np.asarray(region_embeds, np.float32)
    valid = np.ones(len(region_embeds), bool) if region_mask is None else np.asarray(region_mask, bool)
    if not valid.any():
        raise ValueError("phrase_region_matches needs at least one valid region")
    # s(p, I) = max_i cos(p, r_i)
    scores = np.where(valid[None, :], phrase_embeds @ region_embeds.T, -np.inf)
    best = scores.argmax(axis=1)
    return best.astype(np.int64), scores[np.arange(len(best)), best].astype(np.float32)


def _matches(query, embeds, boxes, labels):
    if query.phrase_embeds is None or not query.phrases:
        return []
    regions, scores = phrase_region_matches(query.phrase_embeds, embeds)
    return [PhraseMatch(phrase=text, region=int(r), score=float(s), box=np.asarray(boxes[r], np.float32),
                        label=str(labels[r]) if r < len(labels) else "region")
            for (text, _), r, s in zip(query.phrases, regions, scores)]


def _ranked(scores, top_k):
    positive_int(top_k, "top_k")
    return np.argsort(-np.asarray(scores), kind="stable")[:top_k]


RANK_BY = ("sentence", "phrases", "both")


def search_index(index, model, processor, query, top_k=8, rank_by="sentence", phrase_weight=0.5):
    """Rank the images of `index` for the sentence `query`.

    rank_by: "sentence" scores an image by cos(image, sentence) (the model's image-sentence score); "phrases" by the
    mean over the query's phrases of each phrase's best region (hierarchical model only): every part of a compound
    query ("a red circle next to a blue star") must be found in the image; "both" adds the two,
    `cos(image, sentence) + phrase_weight * phrases`.
    Returns `(hits, query)`: the best `top_k` images as `Hit`s (name = image path; matches: the best region of
    each phrase of the query in that image) and the embedded `Query`.
    """
    if not isinstance(query, str):
        raise ValueError(f"the query must be a string, got {type(query).__name__}")
    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}")
    if bool(model.config.hierarchical) != index.hierarchical:
        raise IndexMismatchError("the index and the model disagree on config.hierarchical: re-index the images")
    embedded = embed_query(model, processor, query)
    # s(I, q) = cos(v_I, s_q)
    scores = index.image_embeds @ embedded.sentence_embed
    if rank_by != "sentence":
        if embedded.phrase_embeds is None or not embedded.phrases:
            raise ValueError(f"rank_by={rank_by!r} needs phrase embeddings: the hierarchical model and a query with at "
                             f"least one phrase ({query!r} has "
                             f"{'none' if embedded.phrase_embeds is not None else 'a flat model'})")
        # s_P(I, q) = mean_p s(p, I), with the model's phrase-image score s(p, I) = max_i cos(p, r_i^I)
        phrases = torch.from_numpy(np.asarray(embedded.phrase_embeds, np.float32)).unsqueeze(0)  # (1, P, E)
        with torch.no_grad():
            similarity = model.phrase_image_similarity(phrases, torch.from_numpy(index.region_embeds),
                                                       torch.from_numpy(index.region_mask))
        phrase_scores = similarity[0].mean(dim=0).numpy()
        scores = phrase_scores if rank_by == "phrases" else scores + phrase_weight * phrase_scores
    hits = [Hit(rank=rank + 1, row=int(row), score=float(scores[row]), name=index.paths[row],
                matches=_matches(embedded, *index.regions_of(row)))
            for rank, row in enumerate(_ranked(scores, top_k))]
    return hits, embedded


def annotate_image(model, processor, image, sentences, top_k=None, extractor=None, batch_size=128):
    """Rank `sentences` (a list of strings) for one `image` (a path, PIL image or array) by cos(image, sentence).

    Returns a dict: "image" (H, W, 3) uint8, "hits" (the best `top_k`, all when None, as `Hit`s: name = the
    sentence, row = its position in `sentences`, matches = its phrases' best regions), "queries" (one `Query`
    per sentence), "regions" (the image's kept regions as `embed_raw_images` gives them).
    """
    if isinstance(sentences, str) or not isinstance(sentences, (list, tuple)) or not sentences:
        raise ValueError("sentences must be a non-empty list of strings")
    queries = embed_query(model, processor, list(sentences), batch_size=batch_size)
    pixels = load_image(image)
    extractor = extractor or region_extractor_of(processor, model_device_dtype(model)[0])
    image_embeds, (regions,) = embed_raw_images(model, processor, [extractor(pixels)])
    # s(I, q) = cos(v_I, s_q)
    scores = np.stack([q.sentence_embed for q in queries]) @ image_embeds[0]
    hits = [Hit(rank=rank + 1, row=int(row), score=float(scores[row]), name=queries[row].text,
                matches=_matches(queries[row], regions["embeds"], regions["boxes"], regions["labels"]))
            for rank, row in enumerate(_ranked(scores, top_k or len(queries)))]
    return {"image": pixels, "hits": hits, "queries": queries, "regions": regions}


def format_table(hits, name_header="path"):
    """A text table of hits: rank, score, name and, when the hits have phrase matches, the best region of every
    phrase (`region index (label, cos)`)."""
    width = max([len(name_header)] + [len(hit.name) for hit in hits])
    phrased = any(hit.matches for hit in hits)
    lines = [f"{'rank':>4}  {'score':>7}  {name_header:<{width}}"
             + ("  phrase -> best region (label, cos)" if phrased else "")]
    for hit in hits:
        matched = "; ".join(f"{m.phrase!r} -> {m.region} ({m.label}, {m.score:.2f})" for m in hit.matches)
        lines.append(f"{hit.rank:>4}  {hit.score:>7.4f}  {hit.name:<{width}}  {matched}".rstrip())
    return "\n".join(line.rstrip() for line in lines)


# ------------------------------------------------------------------------------------------------ drawing


@dataclass
class SheetCell:
    """One image of a sheet: `image` (H, W, 3) uint8, `caption` (above it), `outlines` [(phrase number from 0,
    normalised box (4,), cos)] drawn in the phrase's legend colour."""

    image: np.ndarray
    caption: str
    outlines: list = field(default_factory=list)


def phrase_colours(count):
    """`count` distinct RGB colours (matplotlib's tab10, cycled), one per phrase."""
    from matplotlib import colormaps

    return [colormaps["tab10"](k % 10)[:3] for k in range(count)]


def _outline(axis, image, outlines, colours):
    """Draw the outlines of one cell. A region outlined by several phrases gets one rectangle each, the later ones
    around the earlier (inside them when that would leave the image), numbered side by side."""
    from matplotlib.patches import Rectangle
    from matplotlib.patheffects import withStroke

    height, width = image.shape[:2]
    step = max(width, height) * 0.025
    drawn = {}
    for number, box, _ in outlines:
        # pixel edges lie half a pixel before the pixel centres that imshow puts at integers
        x1, y1, x2, y2 = (np.asarray(box, np.float64) * [width, height, width, height] - 0.5).tolist()
        key = (round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1))
        level = drawn.get(key, 0)
        drawn[key] = level + 1
        grow = step * level
        if x1 - grow < -0.5 or y1 - grow < -0.5 or x2 + grow > width - 0.5 or y2 + grow > height - 0.5:
            grow = -grow
        left, top = x1 - grow, y1 - grow
        axis.add_patch(Rectangle((left, top), max(x2 - x1 + 2 * grow, 1.0), max(y2 - y1 + 2 * grow, 1.0),
                                 fill=False, edgecolor=colours[number], linewidth=2.0,
                                 path_effects=[withStroke(linewidth=3.2, foreground="black")]))
        axis.text(x1 + 0.5 + level * 4 * step, top + 0.5, str(number + 1), color="white", fontsize=7, va="top",
                  ha="left", bbox={"facecolor": colours[number], "pad": 0.8, "linewidth": 0})


def draw_sheet(cells, path, title, phrases=(), note=None, footer=None, columns=4, cell_inches=2.6, dpi=100):
    """Save a contact sheet PNG: the cells in a grid (images upscaled nearest-neighbour, about
    `cell_inches * dpi` pixels a side), each with its caption and outlines; a legend of the `phrases` (numbered,
    coloured as their outlines), a `note` under the title and `footer` lines under the grid. Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if not cells:
        raise ValueError("a sheet needs at least one image")
    columns = max(1, min(columns, len(cells)))
    rows = math.ceil(len(cells) / columns)
    colours = phrase_colours(len(phrases))
    width = max(columns * cell_inches, 6.0)
    wrap = max(40, int(width * 11))  # characters of an 11-point line across the figure
    heading = "\n".join(textwrap.fill(part, wrap) for part in [title] + ([note] if note else []))
    legend_rows = math.ceil(len(phrases) / 3)
    header = 0.25 + 0.22 * (heading.count("\n") + 1) + (0.35 + 0.22 * legend_rows if phrases else 0.0)
    lines = list(footer or [])
    body = rows * (cell_inches + 0.55) + 0.16 * len(lines)
    figure = Figure(figsize=(width, header + body), layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subfigures(2, 1, height_ratios=[header, body])
    top.text(0.5, 1.0 - 0.1 / header, heading, ha="center", va="top", fontsize=11)
    if phrases:
        handles = [Patch(facecolor="none", edgecolor=colour, linewidth=2.5, label=f"{k + 1}. {text}")
                   for k, (text, colour) in enumerate(zip(phrases, colours))]
        top.legend(handles=handles, loc="lower center", ncol=min(3, len(handles)), fontsize=9, frameon=False,
                   title="phrase -> its best-matching region in each image", title_fontsize=8)
    axes = np.atleast_1d(bottom.subplots(rows, columns, squeeze=False)).ravel()
    for axis in axes[len(cells):]:
        axis.axis("off")
    for axis, cell in zip(axes, cells):
        axis.imshow(cell.image, interpolation="nearest")
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_title(cell.caption, fontsize=8)
        _outline(axis, cell.image, cell.outlines, colours)
    if lines:
        bottom.supxlabel("\n".join(lines), fontsize=8, x=0.02, ha="left", family="monospace")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return path
