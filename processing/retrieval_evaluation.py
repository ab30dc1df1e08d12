"""Evaluate the retrieval model (`HMLSTMModel`) as the field reports it: image-sentence retrieval, region-phrase
grounding and phrase-level queries (inference only).

Steps: `embed_dataset` embeds every image (and its regions) and every sentence (and its phrases) of a
`CaptioningDataset` once; the metrics are then computed from the stored embeddings.

Image-sentence retrieval (`retrieval_results`, metrics of `processing.retrieval_metrics`): image annotation
(image -> sentences) and image search (sentence -> images) R@1/5/10, median and mean rank, and rsum (the sum of
the six recalls), under a protocol:
- "coco1k": the average over folds of 1,000 images (5 folds on the 5,000-image COCO test split);
- "coco5k": all 5,000 COCO test images at once;
- "full": all the images of the split at once (Flickr30K's 1,000-image test split is "full");
- "auto": "coco1k" and "coco5k" when the split has exactly 5,000 images, else "full", plus the 1K folds when
  the number of images is a multiple of 1,000 above 1,000.
Sentence `s` is a positive of its own image only (`sentence_image`); the similarity is the cosine.

Region-phrase grounding (`grounding_results`, hierarchical model only: the flat model has no phrase embeddings)
on phrase annotations stored in the Karpathy JSON, modelled on Flickr30K Entities. The format (decision): a
sentence may carry ``"phrases": [{"first_word_index": int, "phrase": str, "boxes": [[x1, y1, x2, y2], ...]}]``;
``first_word_index`` indexes the words of `split_caption(raw)` (the caption tokenizer's words), ``phrase`` is
the phrase's text (its `split_caption` words must be those of the sentence from there on), ``boxes`` are the
pixel boxes of what the phrase names (several for "two dogs"); the image entry's ``width`` and ``height``
normalise them. Extra keys are allowed (the quick-start data add ``"ambiguous"``). `processing.captions` keeps
only raw text and tokens of the sentences, so `load_phrase_annotations` reads the phrases from the JSON itself.
A phrase is grounded on the valid region whose embedding has the highest cosine with the phrase's embedding; it
is correct when that region's box has IoU >= 0.5 (`box_iou`) with ANY of its gold boxes (several gold boxes:
any of the named objects is a right answer; Flickr30K Entities papers instead merge them into their union box,
`multiple_boxes="union"`). Ties are pessimistic as in `region_phrase_grounding_accuracy`: every region
attaining the maximum must be correct. Which phrase embedding (`phrases=`):
- "annotated" (default, the Flickr30K Entities protocol: the phrases are given): the sentence is embedded with
  the annotated spans `[first_word_index, first_word_index + len(words))` as its phrase spans. A phrase
  embedding depends only on the words of its span (over the sentence's word states), so every annotated phrase
  is scored;
- "extracted": the embedding of the extracted phrase (the processor's phrase spans, as in training) that
  contains the whole annotated phrase; an annotated phrase with no such span, or sharing it with another
  annotated phrase, is not scored (counted as "unmatched" / "shared").
Also reported: the upper bound (the fraction of scored phrases for which some region is correct) and the
counts of annotated, scored and skipped phrases.

Phrase-level queries (`phrase_query_scores`, `phrase_query_metrics`): short queries ("a red circle") with their
relevant images (every image holding such an object) rank all the images. The hierarchical model scores an
image by the best match of the query, embedded as one phrase spanning the whole query, among the image's
regions: `max_i cos(phrase, region_i)` (its phrase-image score); the flat model by `cos(sentence embedding of
the query, image embedding)`. Reported: R@1/5/10 (a hit when any relevant image is in the top K), median and
mean rank of the best relevant image, P@10 and mAP, all percentages but the ranks, with pessimistic ties (an
irrelevant image tied with a relevant one ranks first).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from .arguments import positive_int
from .retrieval_data import RetrievalCollator, retrieval_inputs
from .retrieval_metrics import (
    RECALL_KS,
    box_iou,
    fold_averaged_retrieval_metrics,
    ranks_to_metrics,
    retrieval_metrics,
)
from .tokenization_glied import split_caption

__all__ = [
    "PROTOCOLS",
    "RetrievalEmbeddings",
    "embed_dataset",
    "embed_texts",
    "evaluate_phrase_queries",
    "evaluate_retrieval",
    "format_results",
    "grounding_results",
    "load_phrase_annotations",
    "load_phrase_queries",
    "phrase_query_metrics",
    "phrase_query_scores",
    "resolve_protocol",
    "retrieval_results",
]

PROTOCOLS = ("auto", "coco1k", "coco5k", "full")
COCO_TEST_IMAGES = 5000
FOLD_SIZE = 1000
FLAT_MODEL_NOTE = "the flat model (config.hierarchical=False) has no phrase embeddings: no grounding"


# ---------------------------------------------------------------------------------------------- embeddings


@dataclass
class RetrievalEmbeddings:
    """The embeddings of one split (numpy, float32, on the CPU); I images, S sentences, Q phrases in all.

    image_ids: [I] str; image_embeds: (I, E); region_embeds: (I, N, E) or None (not kept); region_mask: (I, N)
    bool; region_boxes: (I, N, 4) normalised x1 y1 x2 y2 or None (no boxes in the store).
    sentences: [S] raw text, image after image; sentence_image: (S,) int64 image row of each sentence;
    sentence_number: (S,) int64 index of the sentence among its image's captions; sentence_embeds: (S, E).
    Phrases, stored flat (no padding): phrase_embeds (Q, E), phrase_spans (Q, 2) `[start, end)` word indices,
    phrase_sentence (Q,) the sentence of each phrase; all three None in the flat model.
    hierarchical: the model's `config.hierarchical`.
    """

    image_ids: list
    image_embeds: np.ndarray
    region_embeds: Optional[np.ndarray]
    region_mask: np.ndarray
    region_boxes: Optional[np.ndarray]
    sentences: list
    sentence_image: np.ndarray
    sentence_number: np.ndarray
    sentence_embeds: np.ndarray
    phrase_embeds: Optional[np.ndarray]
    phrase_spans: Optional[np.ndarray]
    phrase_sentence: Optional[np.ndarray]
    hierarchical: bool

    def phrases_of(self, sentence):
        """`(spans (P, 2), embeds (P, E))` of one sentence (empty in the flat model)."""
        if self.phrase_embeds is None:
            return np.zeros((0, 2), np.int64), np.zeros((0, self.sentence_embeds.shape[1]), np.float32)
        rows = np.flatnonzero(self.phrase_sentence == sentence)
        return self.phrase_spans[rows], self.phrase_embeds[rows]


def model_device_dtype(model):
    """The device and dtype of the model's parameters."""
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def to_model(inputs, device, dtype):
    """Model inputs on the model's device, floating ones in its dtype."""
    return {key: value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
            for key, value in inputs.items()}


def to_numpy(tensor):
    """A tensor as a float32 numpy array on the CPU."""
    return tensor.detach().to("cpu", torch.float32).numpy()


def pad_first_axis(arrays, value=0):
    """Stack arrays that differ in their first axis, padding it with `value`."""
    longest = max(a.shape[0] for a in arrays)
    out = np.full((len(arrays), longest, *arrays[0].shape[1:]), value, dtype=arrays[0].dtype)
    for row, array in enumerate(arrays):
        out[row, :array.shape[0]] = array
    return out


@torch.no_grad()
def embed_dataset(model, processor, dataset, batch_size=128, progress=True, with_regions=True,
                  description="embedding"):
    """Embed every image, region, sentence and phrase of a `CaptioningDataset` once.

    Args:
        model: an `HMLSTMModel` (any device; the embeddings come back to the CPU as float32 numpy arrays).
        processor: its `HMLSTMProcessor` (batches made by `processing.retrieval_data.RetrievalCollator`: every
            caption of an item is a sentence).
        dataset: a `CaptioningDataset` (its `captions_per_image` limits the sentences per image).
        with_regions: keep the region embeddings (I, N, E), needed by grounding and by the hierarchical model's
            phrase queries; False saves I * N * E floats (COCO 5K, 36 regions, E=1024: 737 MB).

    Returns:
        a `RetrievalEmbeddings`.
    """
    if len(dataset) == 0:
        raise ValueError("the data set is empty: nothing to embed")
    positive_int(batch_size, "batch_size")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         collate_fn=RetrievalCollator(processor,
                                                                      with_phrases=bool(model.config.hierarchical)))
    device, dtype = model_device_dtype(model)
    hierarchical = bool(model.config.hierarchical)
    was_training = model.training
    model.eval()
    image_ids, images, regions, region_masks, boxes = [], [], [], [], []
    sentences, sentence_image, sentence_number, sentence_embeds = [], [], [], []
    phrase_embeds, phrase_spans, phrase_sentence = [], [], []
    try:
        for batch in tqdm(loader, desc=description, disable=not progress, leave=False):
            inputs = to_model(retrieval_inputs(batch), device, dtype)
            region_mask, region_boxes = batch["region_mask"], batch.get("region_boxes")
            captions = batch["references"]  # the item's captions: the sentences, image after image
            image_embeds, region_embeds = model.embed_images(
                inputs["region_features"], inputs["region_mask"], inputs.get("region_boxes"))
            first_image = len(image_ids)
            image_ids.extend(str(i) for i in batch["image_ids"])
            images.append(to_numpy(image_embeds))
            valid = region_mask.bool().numpy()
            region_embeds = to_numpy(region_embeds) if with_regions else None
            for row in range(valid.shape[0]):  # the valid regions of each image, first to last
                region_masks.append(np.ones(int(valid[row].sum()), dtype=bool))
                if with_regions:
                    regions.append(region_embeds[row][valid[row]])
                if region_boxes is not None:
                    boxes.append(region_boxes[row].to(torch.float32).numpy()[valid[row]])
            index = batch["sentence_image_index"].long()
            expected = np.repeat(np.arange(len(captions)), [len(c) for c in captions])
            if not np.array_equal(index.numpy(), expected):
                raise ValueError("the collator's sentence_image_index does not list the captions image after image")
            first_sentence = len(sentences)
            sentences.extend(text for texts in captions for text in texts)
            sentence_image.append(first_image + index.numpy())
            sentence_number.append(np.concatenate([np.arange(len(c)) for c in captions]))
            spans, phrase_mask = batch.get("phrase_spans"), batch.get("phrase_mask")
            sentence, phrases = model.embed_sentences(inputs["input_ids"], inputs["attention_mask"],
                                                      inputs.get("phrase_spans"), inputs.get("phrase_mask"))
            sentence_embeds.append(to_numpy(sentence))
            if phrases is not None:
                b, p = phrase_mask.bool().nonzero(as_tuple=True)
                phrase_embeds.append(to_numpy(phrases[b.to(device), p.to(device)]))
                phrase_spans.append(spans[b, p].long().numpy())
                phrase_sentence.append(first_sentence + b.numpy())
    finally:
        model.train(was_training)
    embed_size = images[0].shape[1]
    has_phrases = hierarchical and bool(phrase_embeds)
    return RetrievalEmbeddings(
        image_ids=image_ids,
        image_embeds=np.concatenate(images),
        region_embeds=pad_first_axis(regions) if with_regions else None,
        region_mask=pad_first_axis(region_masks, False),
        region_boxes=pad_first_axis(boxes) if len(boxes) == len(image_ids) else None,  # None unless every image had boxes
        sentences=sentences,
        sentence_image=np.concatenate(sentence_image).astype(np.int64),
        sentence_number=np.concatenate(sentence_number).astype(np.int64),
        sentence_embeds=np.concatenate(sentence_embeds),
        phrase_embeds=np.concatenate(phrase_embeds).reshape(-1, embed_size) if has_phrases else None,
        phrase_spans=np.concatenate(phrase_spans).reshape(-1, 2) if has_phrases else None,
        phrase_sentence=np.concatenate(phrase_sentence).astype(np.int64) if has_phrases else None,
        hierarchical=hierarchical,
    )


@torch.no_grad()
def embed_texts(model, processor, texts, spans=None, batch_size=128):
    """Embed free sentences (queries): `(sentence_embeds (S, E), phrase_embeds)` as float32 numpy arrays.

    spans: None (the processor's own phrase spans; phrase_embeds is then None), "whole" (one phrase spanning
    each whole sentence: phrase_embeds (S, E)), or one list of `(start, end)` word spans per sentence
    (phrase_embeds: a list of (P_s, E) arrays; spans beyond the processor's tokens raise a ValueError).
    phrase_embeds is None in the flat model.
    """
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty list of strings")
    if spans is not None and spans != "whole" and len(spans) != len(texts):
        raise ValueError(f"spans must hold one list of spans per text: {len(spans)} for {len(texts)} texts")
    device, _ = model_device_dtype(model)
    hierarchical = bool(model.config.hierarchical)
    was_training = model.training
    model.eval()
    sentence_out, phrase_out = [], []
    try:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            # the processor parses phrases only when the model is to use its own spans
            inputs = processor(sentences=chunk, return_tensors="pt", return_phrases=spans is None)
            input_ids, attention_mask = inputs["input_ids"].to(device), inputs["attention_mask"].to(device)
            lengths = inputs["attention_mask"].sum(dim=1)
            if spans is None:
                chunk_spans, chunk_mask = inputs.get("phrase_spans"), inputs.get("phrase_mask")
            elif spans == "whole":
                chunk_spans = torch.stack([torch.zeros_like(lengths), lengths], dim=1).unsqueeze(1)
                chunk_mask = torch.ones(len(chunk), 1, dtype=torch.long)
            else:
                given = [list(s) for s in spans[start:start + batch_size]]
                for number, (sentence_spans, length) in enumerate(zip(given, lengths.tolist())):
                    for a, b in sentence_spans:
                        if not 0 <= a < b <= length:
                            raise ValueError(f"span ({a}, {b}) does not fit the {length} tokens of text "
                                             f"{start + number} ({chunk[number]!r})")
                count = max([len(s) for s in given] + [0])
                chunk_spans = torch.zeros(len(chunk), count, 2, dtype=torch.long)
                chunk_mask = torch.zeros(len(chunk), count, dtype=torch.long)
                for row, sentence_spans in enumerate(given):
                    if sentence_spans:
                        chunk_spans[row, :len(sentence_spans)] = torch.tensor(sentence_spans, dtype=torch.long)
                        chunk_mask[row, :len(sentence_spans)] = 1
            sentence, phrases = model.embed_sentences(
                input_ids, attention_mask, None if chunk_spans is None else chunk_spans.to(device),
                None if chunk_mask is None else chunk_mask.to(device))
            sentence_out.append(to_numpy(sentence))
            if phrases is None or spans is None:
                continue
            phrases = to_numpy(phrases)
            if spans == "whole":
                phrase_out.append(phrases[:, 0])
            else:
                phrase_out.extend(phrases[row, :int(chunk_mask[row].sum())] for row in range(len(chunk)))
    finally:
        model.train(was_training)
    sentences = np.concatenate(sentence_out)
    if not hierarchical or spans is None:
        return sentences, None
    return sentences, (np.concatenate(phrase_out) if spans == "whole" else phrase_out)


# ----------------------------------------------------------------------------------------------- retrieval


def resolve_protocol(protocol, n_images):
    """The result keys a protocol gives for `n_images` images: a list from "1k", "5k", "full"."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "coco1k":
        if n_images % FOLD_SIZE:
            raise ValueError(f"protocol 'coco1k' needs a multiple of {FOLD_SIZE} images, the split has {n_images}")
        return ["1k"]
    if protocol == "coco5k":
        if n_images != COCO_TEST_IMAGES:
            raise ValueError(f"protocol 'coco5k' needs the {COCO_TEST_IMAGES}-image COCO test split, the split has "
                             f"{n_images} images (use 'full')")
        return ["5k"]
    if protocol == "full":
        return ["full"]
    if n_images == COCO_TEST_IMAGES:
        return ["1k", "5k"]
    return ["full", "1k"] if n_images % FOLD_SIZE == 0 and n_images > FOLD_SIZE else ["full"]


def retrieval_results(embeddings, protocol="auto"):
    """Image annotation and image search metrics of the embeddings under `protocol` (see the module docstring).

    Returns {"protocol": [keys], "images": I, "sentences": S, <key>: {"annotation": {r1, r5, r10, medr, meanr},
    "search": {...}, "rsum"}} for each key of the protocol ("1k" adds "folds", the per-fold results).
    """
    n_images = len(embeddings.image_ids)
    keys = resolve_protocol(protocol, n_images)
    # S_ij = cos(image i, sentence j)
    similarity = embeddings.image_embeds @ embeddings.sentence_embeds.T
    owner = embeddings.sentence_image
    results = {"protocol": keys, "images": n_images, "sentences": int(len(owner))}
    for key in keys:
        if key == "1k":
            results[key] = fold_averaged_retrieval_metrics(similarity, n_folds=n_images // FOLD_SIZE,
                                                           sentence_image=owner)
        else:
            results[key] = retrieval_metrics(similarity, sentence_image=owner)
    return results


# ----------------------------------------------------------------------------------------------- grounding


def _check_phrase(phrase, where, path):
    if not isinstance(phrase, dict):
        raise ValueError(f"{path}: {where} is not a JSON object")
    for key in ("first_word_index", "phrase", "boxes"):
        if key not in phrase:
            raise ValueError(f"{path}: {where} has no {key!r} key")
    first = phrase["first_word_index"]
    if not isinstance(first, int) or isinstance(first, bool) or first < 0:
        raise ValueError(f"{path}: {where}['first_word_index'] must be an integer >= 0, got {first!r}")
    if not isinstance(phrase["phrase"], str) or not split_caption(phrase["phrase"]):
        raise ValueError(f"{path}: {where}['phrase'] must be a non-empty string")
    boxes = np.asarray(phrase["boxes"], dtype=np.float64) if isinstance(phrase["boxes"], list) else None
    if boxes is None or boxes.ndim != 2 or boxes.shape[1:] != (4,) or len(boxes) == 0 \
            or np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
        raise ValueError(f"{path}: {where}['boxes'] must be a non-empty list of [x1, y1, x2, y2] pixel boxes")
    return boxes


def load_phrase_annotations(path, image_ids=None):
    """The phrase grounding annotations of a Karpathy-style JSON (the format of the module docstring).

    Returns {image_id: [[{"first_word_index", "phrase", "words", "boxes" (G, 4) normalised}] per sentence]}
    for the images (of `image_ids`, when given) with at least one annotated sentence; the image id is the one
    `processing.captions.load_karpathy_split` gives. Raises ValueError on a malformed annotation or an
    annotated image without a width and height.
    """
    from .captions import load_karpathy_split

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption file {path} does not exist")
    data = json.loads(path.read_text(encoding="utf-8"))
    records = load_karpathy_split(path, split="all")  # ids as the data set has them, in file order
    wanted = None if image_ids is None else {str(i) for i in image_ids}
    annotations = {}
    for number, (image, record) in enumerate(zip(data["images"], records)):
        image_id = record["image_id"]
        if wanted is not None and image_id not in wanted:
            continue
        sentences = image["sentences"]
        if not any(isinstance(s, dict) and s.get("phrases") for s in sentences):
            continue
        width, height = record["width"], record["height"]
        if not width or not height:
            raise ValueError(f"{path}: images[{number}] ({image_id}) has phrase boxes but no 'width'/'height' to "
                             "normalise them")
        scale = np.array([width, height, width, height], dtype=np.float64)
        per_sentence = []
        for k, sentence in enumerate(sentences):
            phrases = sentence.get("phrases") or []
            if not isinstance(phrases, list):
                raise ValueError(f"{path}: images[{number}]['sentences'][{k}]['phrases'] must be a list")
            entries = []
            for m, phrase in enumerate(phrases):
                boxes = _check_phrase(phrase, f"images[{number}]['sentences'][{k}]['phrases'][{m}]", path)
                entries.append({"first_word_index": phrase["first_word_index"], "phrase": phrase["phrase"],
                                "words": split_caption(phrase["phrase"]), "boxes": boxes / scale})
            per_sentence.append(entries)
        annotations[image_id] = per_sentence
    return annotations


def _token_counts(processor, texts, batch_size):
    """The number of tokens the processor keeps of each text."""
    counts = []
    for start in range(0, len(texts), batch_size):
        counts.extend(processor(sentences=texts[start:start + batch_size], return_tensors="pt",
                                return_phrases=False)["attention_mask"]
                      .sum(dim=1).tolist())
    return counts


def _grounded(scores, valid, region_boxes, gold_boxes, iou_threshold):
    """(correct, reachable) of one phrase: scores (N,), valid (N,) bool, region_boxes (N, 4), gold_boxes (G, 4)."""
    # a region is right when IoU(region, some gold box) >= threshold
    right = (box_iou(region_boxes[:, None, :], gold_boxes[None, :, :]) >= iou_threshold).any(axis=1) & valid
    best = valid & (scores == scores[valid].max())
    return bool(np.all(right[best])), bool(right.any())


def _union_box(boxes):
    return np.concatenate([boxes[:, :2].min(axis=0), boxes[:, 2:].max(axis=0)])


def grounding_results(embeddings, annotations, model=None, processor=None, phrases="annotated",
                      iou_threshold=0.5, multiple_boxes="any", batch_size=128):
    """Region-phrase grounding accuracy of the annotated phrases of the embedded sentences.

    Args:
        embeddings: `embed_dataset` output, with region embeddings and boxes.
        annotations: `load_phrase_annotations` output (or a path to the JSON).
        model, processor: needed for phrases="annotated" (the annotated spans are embedded anew).
        phrases: "annotated" or "extracted" (see the module docstring).
        multiple_boxes: "any" (correct when the chosen region matches any gold box) or "union" (the gold boxes
            merged into their union box, as Flickr30K Entities papers do).

    Returns {"accuracy" (0-1, None when nothing was scored), "upper_bound", "annotated", "scored", "unaligned"
    (the phrase's words are not the sentence's at first_word_index), "truncated" (beyond the processor's
    tokens), "overlapping" (overlaps an earlier annotated phrase of its sentence; "annotated" only),
    "unmatched", "shared" (no / a shared extracted span; "extracted" only), "phrases", "multiple_boxes",
    "iou_threshold"}, or {"available": False, "reason"} for the flat model.
    """
    if phrases not in ("annotated", "extracted"):
        raise ValueError(f"phrases must be 'annotated' or 'extracted', got {phrases!r}")
    if multiple_boxes not in ("any", "union"):
        raise ValueError(f"multiple_boxes must be 'any' or 'union', got {multiple_boxes!r}")
    if not embeddings.hierarchical:
        return {"available": False, "reason": FLAT_MODEL_NOTE}
    if embeddings.region_embeds is None:
        raise ValueError("grounding needs the region embeddings: embed_dataset(..., with_regions=True)")
    if embeddings.region_boxes is None:
        raise ValueError("grounding needs region boxes, and the feature store has none (no image size known?)")
    if phrases == "annotated" and (model is None or processor is None):
        raise ValueError("phrases='annotated' embeds the annotated spans: pass model and processor")
    if isinstance(annotations, (str, Path)):
        annotations = load_phrase_annotations(annotations, embeddings.image_ids)
    counts = dict(annotated=0, unaligned=0, truncated=0, overlapping=0, unmatched=0, shared=0)
    # (sentence, annotation) pairs to score, with their spans
    todo = []
    for s, text in enumerate(embeddings.sentences):
        image_id = embeddings.image_ids[embeddings.sentence_image[s]]
        per_sentence = annotations.get(image_id)
        number = int(embeddings.sentence_number[s])
        if per_sentence is None or number >= len(per_sentence):
            continue
        words = split_caption(text)
        for entry in per_sentence[number]:
            counts["annotated"] += 1
            start, end = entry["first_word_index"], entry["first_word_index"] + len(entry["words"])
            if words[start:end] != entry["words"]:
                counts["unaligned"] += 1
                continue
            todo.append((s, start, end, entry))
    scored = []  # (phrase embedding, image row, gold boxes)
    if phrases == "extracted":
        by_span = {}
        for s, start, end, entry in todo:
            spans, embeds = embeddings.phrases_of(s)
            inside = np.flatnonzero((spans[:, 0] <= start) & (spans[:, 1] >= end))
            if inside.size == 0:
                counts["unmatched"] += 1
                continue
            by_span.setdefault((s, int(inside[0])), []).append((embeds[inside[0]], entry))
        for (s, _), found in by_span.items():
            if len(found) > 1:
                counts["shared"] += len(found)
                continue
            scored.append((found[0][0], embeddings.sentence_image[s], found[0][1]["boxes"]))
    elif todo:
        sentences = sorted({s for s, *_ in todo})
        lengths = dict(zip(sentences, _token_counts(processor, [embeddings.sentences[s] for s in sentences],
                                                    batch_size)))
        spans = {s: [] for s in sentences}
        for s, start, end, entry in sorted(todo, key=lambda item: item[:2]):
            if end > lengths[s]:
                counts["truncated"] += 1
            elif spans[s] and start < spans[s][-1][1]:
                counts["overlapping"] += 1  # the model takes non-overlapping phrases; the first one is kept
            else:
                spans[s].append((start, end, entry))
        sentences = [s for s in sentences if spans[s]]
        if sentences:
            _, embeds = embed_texts(model, processor, [embeddings.sentences[s] for s in sentences],
                                    spans=[[(a, b) for a, b, _ in spans[s]] for s in sentences],
                                    batch_size=batch_size)
            for s, sentence_embeds in zip(sentences, embeds):
                for (_, _, entry), embed in zip(spans[s], sentence_embeds):
                    scored.append((embed, embeddings.sentence_image[s], entry["boxes"]))
    results = {"phrases": phrases, "multiple_boxes": multiple_boxes, "iou_threshold": iou_threshold, **counts,
               "scored": len(scored), "accuracy": None, "upper_bound": None}
    if not scored:
        return results
    correct = reachable = 0
    for embed, image, gold in scored:
        valid = embeddings.region_mask[image]
        # cos(phrase, region_i): both are L2-normalised
        scores = embeddings.region_embeds[image] @ embed
        if multiple_boxes == "union":
            gold = _union_box(gold)[None]
        hit, possible = _grounded(scores, valid, embeddings.region_boxes[image], gold, iou_threshold)
        correct += hit
        reachable += possible
    results["accuracy"] = correct / len(scored)
    results["upper_bound"] = reachable / len(scored)
    return results


# ------------------------------------------------------------------------------------------- phrase queries


def _relevance_matrix(relevant, n_queries, n_images):
    if isinstance(relevant, np.ndarray) and relevant.dtype == bool:
        if relevant.shape != (n_queries, n_images):
            raise ValueError(f"relevant must have shape {(n_queries, n_images)} like scores, got {relevant.shape}")
        return relevant
    relevant = list(relevant)
    if len(relevant) != n_queries:
        raise ValueError(f"relevant must hold one list of image indices per query: {len(relevant)} for "
                         f"{n_queries} queries")
    matrix = np.zeros((n_queries, n_images), dtype=bool)
    for q, indices in enumerate(relevant):
        indices = np.asarray(list(indices), dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= n_images):
            raise ValueError(f"relevant image indices of query {q} must lie in [0, {n_images})")
        matrix[q, indices] = True
    return matrix


def phrase_query_metrics(scores, relevant, ks=RECALL_KS, precision_at=10):
    """Ranking metrics of queries with several relevant images.

    Args:
        scores: (Q, I) query-image scores, larger = better.
        relevant: (Q, I) bool matrix, or one list of relevant image indices per query (each query needs one).
        ks: the K of R@K; precision_at: the K of P@K.

    Returns {"r1", "r5", "r10" (a hit when any relevant image is in the top K), "medr", "meanr" (1-based rank of
    the best-ranked relevant image), "p@10" (relevant images among the top 10, over 10), "map" (mean average
    precision), "queries"}; recalls, precision and mAP in percent. Ties are pessimistic: an irrelevant image
    scoring the same as a relevant one is ranked before it.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty (queries, images) matrix, got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contains NaN or infinite values")
    if not isinstance(precision_at, int) or precision_at < 1:
        raise ValueError(f"precision_at must be a positive integer, got {precision_at!r}")
    n_queries, n_images = scores.shape
    rel = _relevance_matrix(relevant, n_queries, n_images)
    empty = np.flatnonzero(~rel.any(axis=1))
    if empty.size:
        raise ValueError(f"queries without any relevant image: {empty[:10].tolist()}")
    # rank = number of irrelevant images scoring >= the best relevant image
    best = np.where(rel, scores, -np.inf).max(axis=1)
    ranks = ((scores >= best[:, None]) & ~rel).sum(axis=1)
    metrics = ranks_to_metrics(ranks, ks)
    # pessimistic order: by score descending, irrelevant before relevant among ties
    order = np.lexsort((rel.astype(np.int8), -scores), axis=1)
    ordered = np.take_along_axis(rel, order, axis=1)
    metrics[f"p@{precision_at}"] = 100.0 * float(np.mean(ordered[:, :precision_at].sum(axis=1) / precision_at))
    # AP = mean over the relevant images of the precision at their position
    precision = np.cumsum(ordered, axis=1) / np.arange(1, n_images + 1)
    average_precision = (precision * ordered).sum(axis=1) / ordered.sum(axis=1)
    metrics["map"] = 100.0 * float(np.mean(average_precision))
    metrics["queries"] = n_queries
    return metrics


def phrase_query_scores(model, processor, embeddings, queries, scoring="auto", batch_size=128, image_chunk=1024):
    """(Q, I) scores of query texts against the embedded images.

    scoring: "phrase" (hierarchical model: `max_i cos(phrase, region_i)`, the query embedded as one phrase
    spanning it), "sentence" (`cos(sentence embedding of the query, image)`), or "auto" (phrase for the
    hierarchical model, sentence for the flat one). Returns `(scores, scoring)`.
    """
    if scoring not in ("auto", "phrase", "sentence"):
        raise ValueError(f"scoring must be 'auto', 'phrase' or 'sentence', got {scoring!r}")
    if scoring == "auto":
        scoring = "phrase" if embeddings.hierarchical else "sentence"
    if scoring == "phrase":
        if not embeddings.hierarchical:
            raise ValueError(f"phrase scoring needs the hierarchical model: {FLAT_MODEL_NOTE.split(':')[0]}")
        if embeddings.region_embeds is None:
            raise ValueError("phrase scoring needs the region embeddings: embed_dataset(..., with_regions=True)")
        _, phrases = embed_texts(model, processor, queries, spans="whole", batch_size=batch_size)
        phrases = torch.from_numpy(phrases).unsqueeze(1)  # (Q, 1, E)
        scores = []
        for start in range(0, len(embeddings.image_ids), image_chunk):
            regions = torch.from_numpy(embeddings.region_embeds[start:start + image_chunk])
            mask = torch.from_numpy(embeddings.region_mask[start:start + image_chunk])
            # s(q, I_k) = max_i cos(q, r_i^k)
            scores.append(model.phrase_image_similarity(phrases, regions, mask)[:, 0].numpy())
        return np.concatenate(scores, axis=1), scoring
    sentences, _ = embed_texts(model, processor, queries, batch_size=batch_size)
    # s(q, I) = cos(q, v_I)
    return sentences @ embeddings.image_embeds.T, scoring


def load_phrase_queries(source, captions=None, split="test"):
    """Phrase queries from "quickstart" (built from the quick-start dataset JSON `captions`, `split`) or a JSON
    file of [{"query": str, "relevant": [image ids], ...}]."""
    if source == "quickstart":
        from .quickstart_data import quickstart_phrase_queries

        if captions is None:
            raise ValueError("quick-start phrase queries are built from the dataset JSON: pass captions")
        return quickstart_phrase_queries(captions, split=split)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"phrase query file {path} does not exist (or pass 'quickstart')")
    queries = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(queries, list) or not all(isinstance(q, dict) and isinstance(q.get("query"), str)
                                                and isinstance(q.get("relevant"), list) for q in queries):
        raise ValueError(f"{path} must hold a list of {{'query': str, 'relevant': [image ids]}}")
    return queries


def evaluate_phrase_queries(model, processor, embeddings, queries, scoring="auto", batch_size=128):
    """Phrase-query metrics of [{"query", "relevant": [image ids], "novel" (optional)}] over the embedded images.

    Relevant ids outside the data set are dropped, and queries left without one are skipped (counted). Returns
    {"scoring", "all": metrics, "seen", "novel" (when the queries say), "skipped"}; metrics as
    `phrase_query_metrics`.
    """
    row = {image_id: index for index, image_id in enumerate(embeddings.image_ids)}
    kept, relevant = [], []
    for query in queries:
        indices = sorted({row[str(i)] for i in query["relevant"] if str(i) in row})
        if indices:
            kept.append(query)
            relevant.append(indices)
    if not kept:
        raise ValueError("no phrase query has a relevant image in the data set")
    scores, scoring = phrase_query_scores(model, processor, embeddings, [q["query"] for q in kept], scoring,
                                          batch_size)
    results = {"scoring": scoring, "all": phrase_query_metrics(scores, relevant),
               "skipped": len(queries) - len(kept)}
    if all("novel" in q for q in kept):
        for name, flag in (("seen", False), ("novel", True)):
            rows = [k for k, q in enumerate(kept) if bool(q["novel"]) == flag]
            if rows:
                results[name] = phrase_query_metrics(scores[rows], [relevant[k] for k in rows])
    return results


# ------------------------------------------------------------------------------------------------ together


def evaluate_retrieval(model, processor, dataset, protocol="auto", *, grounding=None, phrase_queries=None,
                       grounding_phrases="annotated", batch_size=128, progress=True, embeddings=None):
    """Evaluate a retrieval model on a `CaptioningDataset`: retrieval always, grounding and phrase queries when
    asked.

    Args:
        protocol: "auto", "coco1k", "coco5k" or "full" (see the module docstring).
        grounding: the Karpathy JSON with phrase annotations (path), or `load_phrase_annotations` output.
        phrase_queries: [{"query", "relevant": [image ids], "novel"?}] (e.g. `quickstart_phrase_queries`).
        grounding_phrases: "annotated" or "extracted" (`grounding_results`).
        embeddings: reuse an `embed_dataset` result instead of embedding `dataset` again.

    Returns {"model": {"hierarchical"}, "retrieval": `retrieval_results`, "grounding": `grounding_results`
    (when asked), "phrase_queries": `evaluate_phrase_queries` (when asked)}.
    """
    hierarchical = bool(model.config.hierarchical)
    need_regions = grounding is not None or (phrase_queries is not None and hierarchical)
    if embeddings is None:
        embeddings = embed_dataset(model, processor, dataset, batch_size=batch_size, progress=progress,
                                   with_regions=need_regions)
    results = {"model": {"hierarchical": hierarchical}, "retrieval": retrieval_results(embeddings, protocol)}
    if grounding is not None:
        results["grounding"] = grounding_results(embeddings, grounding, model, processor, phrases=grounding_phrases,
                                                 batch_size=batch_size)
    if phrase_queries is not None:
        results["phrase_queries"] = evaluate_phrase_queries(model, processor, embeddings, phrase_queries,
                                                            batch_size=batch_size)
    return results


def _number(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def format_results(results):
    """Markdown tables of an `evaluate_retrieval` result (what `examples/evaluate_retrieval.py` prints)."""
    lines = []
    retrieval = results["retrieval"]
    lines.append(f"Image-sentence retrieval ({retrieval['images']} images, {retrieval['sentences']} sentences)")
    lines.append("| protocol | annotation R@1 | R@5 | R@10 | medr | search R@1 | R@5 | R@10 | medr | rsum |")
    lines.append("|---" * 10 + "|")
    names = {"1k": "1K (5-fold)" if retrieval["images"] == COCO_TEST_IMAGES else "1K folds", "5k": "5K",
             "full": "full"}
    for key in retrieval["protocol"]:
        row = retrieval[key]
        cells = [names[key]]
        for direction in ("annotation", "search"):
            cells += [_number(row[direction][k]) for k in ("r1", "r5", "r10", "medr")]
        lines.append("| " + " | ".join(cells + [_number(row["rsum"])]) + " |")
    grounding = results.get("grounding")
    if grounding is not None:
        lines.append("")
        if grounding.get("available") is False:
            lines.append(f"Region-phrase grounding: not available ({grounding['reason']})")
        else:
            accuracy = None if grounding["accuracy"] is None else 100 * grounding["accuracy"]
            bound = None if grounding["upper_bound"] is None else 100 * grounding["upper_bound"]
            lines.append(f"Region-phrase grounding ({grounding['phrases']} phrases, IoU >= "
                         f"{grounding['iou_threshold']}, {grounding['multiple_boxes']} gold box): accuracy "
                         f"{_number(accuracy)} % on {grounding['scored']} of {grounding['annotated']} annotated "
                         f"phrases (upper bound of the regions {_number(bound)} %)")
    queries = results.get("phrase_queries")
    if queries is not None:
        lines.append("")
        lines.append(f"Phrase-level queries ({queries['scoring']} scoring)")
        lines.append("| queries | n | R@1 | R@5 | R@10 | medr | P@10 | mAP |")
        lines.append("|---" * 8 + "|")
        for group in ("all", "seen", "novel"):
            if group in queries:
                m = queries[group]
                lines.append("| " + " | ".join([group, str(m["queries"])] + [_number(m[k]) for k in (
                    "r1", "r5", "r10", "medr", "p@10", "map")]) + " |")
    return "\n".join(lines)
