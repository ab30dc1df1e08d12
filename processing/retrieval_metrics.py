"""Image-sentence retrieval and region-phrase grounding metrics (numpy only).

Retrieval follows the conventions of Karpathy & Fei-Fei (2015) and VSE++ (Faghri et al., 2018):

* `similarity` is an (n_images, n_sentences) matrix, larger = more similar. Sentence `j` belongs to image
  `j // captions_per_image` (the usual layout: 5 captions per image, in image order), or to
  `sentence_image[j]` when an explicit index array is given.
* Image annotation (image -> sentences, "i2t"): the rank of an image is the rank of its best-ranked true caption.
* Image search (sentence -> images, "t2i"): the rank of a sentence is the rank of its image.
* Ranks are 0-based internally; R@K is the percentage (0-100) of queries with rank < K; the median rank is
  `floor(median(rank)) + 1` and the mean rank `mean(rank) + 1` (1-based), as VSE++ `i2t`/`t2i` print them.
* Ties are counted pessimistically: every wrong item scoring greater than OR EQUAL to the best true item is
  ranked before it. (A constant similarity matrix therefore gives the worst ranks, not lucky ones.)
* COCO "1K" = the metrics averaged over 5 folds of 1,000 test images (and their 5,000 captions), every field
  averaged including the median rank; COCO "5K" = the metrics on all 5,000 images at once.

Region-phrase grounding: a phrase is correct when its best-scoring region is the annotated one (or overlaps the
gold box with IoU >= 0.5). Ties are again pessimistic: every region attaining the maximum must be correct.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "RECALL_KS",
    "image_annotation_ranks",
    "image_search_ranks",
    "ranks_to_metrics",
    "retrieval_metrics",
    "fold_averaged_retrieval_metrics",
    "coco_retrieval_metrics",
    "box_iou",
    "region_phrase_grounding_accuracy",
]

RECALL_KS = (1, 5, 10)


def _similarity_and_owner(similarity, captions_per_image=None, sentence_image=None):
    """Validated (n_images, n_sentences) float matrix and the image index of every sentence."""
    sims = np.asarray(similarity, dtype=np.float64)
    if sims.ndim != 2:
        raise ValueError(f"similarity must be a 2-D (n_images, n_sentences) matrix, got shape {sims.shape}")
    n_images, n_sentences = sims.shape
    if n_images == 0 or n_sentences == 0:
        raise ValueError(f"similarity must have at least one image and one sentence, got shape {sims.shape}")
    if not np.all(np.isfinite(sims)):
        raise ValueError("similarity contains NaN or infinite values")
    if sentence_image is not None:
        if captions_per_image is not None:
            raise ValueError("give either captions_per_image or sentence_image, not both")
        owner = np.asarray(sentence_image)
        if owner.shape != (n_sentences,):
            raise ValueError(f"sentence_image must have shape ({n_sentences},) (one image index per sentence column), "
                             f"got {owner.shape}")
        if owner.size and not np.issubdtype(owner.dtype, np.integer):
            raise ValueError(f"sentence_image must hold integer image indices, got dtype {owner.dtype}")
        owner = owner.astype(np.int64)
        if owner.min() < 0 or owner.max() >= n_images:
            raise ValueError(f"sentence_image values must lie in [0, {n_images}), got [{owner.min()}, {owner.max()}]")
    else:
        if captions_per_image is None:
            if n_sentences % n_images:
                raise ValueError(f"{n_sentences} sentences is not a multiple of {n_images} images: give "
                                 "captions_per_image or sentence_image")
            captions_per_image = n_sentences // n_images
        if not isinstance(captions_per_image, (int, np.integer)) or isinstance(captions_per_image, bool) \
                or captions_per_image < 1:
            raise ValueError(f"captions_per_image must be an integer >= 1, got {captions_per_image!r}")
        if n_sentences != n_images * captions_per_image:
            raise ValueError(f"similarity has {n_sentences} sentence columns, expected n_images * captions_per_image "
                             f"= {n_images} * {captions_per_image} = {n_images * captions_per_image}")
        owner = np.arange(n_sentences) // captions_per_image
    missing = np.setdiff1d(np.arange(n_images), owner)
    if missing.size:
        raise ValueError(f"images without any sentence (image annotation is undefined for them): {missing[:10].tolist()}")
    return sims, owner


def image_annotation_ranks(similarity, captions_per_image=None, sentence_image=None):
    """0-based rank of the best-ranked true caption of every image (image -> sentences), shape (n_images,).

    rank = number of wrong sentences scoring >= the best true caption's score (pessimistic ties).
    """
    sims, owner = _similarity_and_owner(similarity, captions_per_image, sentence_image)
    is_true = owner[None, :] == np.arange(sims.shape[0])[:, None]
    best_true = np.where(is_true, sims, -np.inf).max(axis=1)
    return ((sims >= best_true[:, None]) & ~is_true).sum(axis=1)


def image_search_ranks(similarity, captions_per_image=None, sentence_image=None):
    """0-based rank of the true image of every sentence (sentence -> images), shape (n_sentences,).

    rank = number of other images scoring >= the true image's score (pessimistic ties).
    """
    sims, owner = _similarity_and_owner(similarity, captions_per_image, sentence_image)
    columns = np.arange(sims.shape[1])
    true_score = sims[owner, columns]
    return (sims >= true_score[None, :]).sum(axis=0) - 1  # minus the true image itself


def ranks_to_metrics(ranks, ks=RECALL_KS):
    """{"r1", "r5", "r10" (percent), "medr", "meanr" (1-based)} from 0-based ranks."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
    if np.any(ranks < 0):
        raise ValueError("ranks must be 0-based and >= 0")
    metrics = {f"r{k}": 100.0 * float(np.mean(ranks < k)) for k in ks}
    # medr = floor(median(rank)) + 1, meanr = mean(rank) + 1 (VSE++ i2t/t2i)
    metrics["medr"] = float(np.floor(np.median(ranks)) + 1)
    metrics["meanr"] = float(np.mean(ranks) + 1)
    return metrics


def retrieval_metrics(similarity, captions_per_image=None, sentence_image=None):
    """Image annotation and image search metrics of one similarity matrix.

    Returns {"annotation": {r1, r5, r10, medr, meanr}, "search": {...}, "rsum": sum of the six recalls}.
    """
    annotation = ranks_to_metrics(image_annotation_ranks(similarity, captions_per_image, sentence_image))
    search = ranks_to_metrics(image_search_ranks(similarity, captions_per_image, sentence_image))
    rsum = sum(annotation[f"r{k}"] + search[f"r{k}"] for k in RECALL_KS)
    return {"annotation": annotation, "search": search, "rsum": rsum}


def _average(results):
    return {
        "annotation": {key: float(np.mean([r["annotation"][key] for r in results])) for key in results[0]["annotation"]},
        "search": {key: float(np.mean([r["search"][key] for r in results])) for key in results[0]["search"]},
        "rsum": float(np.mean([r["rsum"] for r in results])),
    }


def fold_averaged_retrieval_metrics(similarity, n_folds=5, captions_per_image=None, sentence_image=None):
    """Metrics averaged over `n_folds` equal contiguous folds of the images (each with its own sentences).

    Fold f holds images [f * n, (f + 1) * n) with n = n_images / n_folds and the sentences of those images; each
    fold is ranked on its own, then every field (recalls, medr, meanr, rsum) is averaged. Returns
    {"annotation", "search", "rsum", "folds": [per-fold results]}.
    """
    sims, owner = _similarity_and_owner(similarity, captions_per_image, sentence_image)
    if not isinstance(n_folds, (int, np.integer)) or isinstance(n_folds, bool) or n_folds < 1:
        raise ValueError(f"n_folds must be an integer >= 1, got {n_folds!r}")
    n_images = sims.shape[0]
    if n_images % n_folds:
        raise ValueError(f"{n_images} images cannot be split into {n_folds} equal folds")
    fold_size = n_images // n_folds
    folds = []
    for fold in range(n_folds):
        start = fold * fold_size
        columns = np.flatnonzero((owner >= start) & (owner < start + fold_size))
        folds.append(retrieval_metrics(sims[start:start + fold_size][:, columns],
                                       sentence_image=owner[columns] - start))
    result = _average(folds)
    result["folds"] = folds
    return result


def coco_retrieval_metrics(similarity, captions_per_image=5, sentence_image=None, fold_size=1000):
    """COCO test results as papers report them: {"1k": 5-fold average of 1,000 images, "5k": all images}.

    `similarity` is (5000, 25000) for the Karpathy COCO test split (5 captions per image); smaller multiples of
    `fold_size` are accepted (n_images / fold_size folds).
    """
    if sentence_image is not None:
        captions_per_image = None
    sims, owner = _similarity_and_owner(similarity, captions_per_image, sentence_image)
    if not isinstance(fold_size, (int, np.integer)) or fold_size < 1 or sims.shape[0] % fold_size:
        raise ValueError(f"the number of images ({sims.shape[0]}) must be a positive multiple of fold_size "
                         f"({fold_size!r}); the COCO 5K test split has 5000")
    return {
        "1k": fold_averaged_retrieval_metrics(sims, n_folds=sims.shape[0] // fold_size, sentence_image=owner),
        "5k": retrieval_metrics(sims, sentence_image=owner),
    }


def box_iou(boxes_a, boxes_b):
    """Intersection over union of boxes (..., 4) x1 y1 x2 y2, broadcast together; 0 where the union is empty."""
    a = np.asarray(boxes_a, dtype=np.float64)
    b = np.asarray(boxes_b, dtype=np.float64)
    for name, boxes in (("boxes_a", a), ("boxes_b", b)):
        if boxes.shape[-1:] != (4,):
            raise ValueError(f"{name} must end in a dimension of 4 (x1, y1, x2, y2), got shape {boxes.shape}")
        if np.any(boxes[..., 2] < boxes[..., 0]) or np.any(boxes[..., 3] < boxes[..., 1]):
            raise ValueError(f"{name} has boxes with x2 < x1 or y2 < y1 (expected x1, y1, x2, y2)")
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    intersection = width * height
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - intersection
    # IoU = |A ∩ B| / |A ∪ B|
    return np.divide(intersection, union, out=np.zeros_like(union), where=union > 0)


def region_phrase_grounding_accuracy(phrase_region_scores, gold_region_index=None, mask=None, *, region_mask=None,
                                     region_boxes=None, gold_boxes=None, iou_threshold=0.5):
    """Fraction (0-1) of valid phrases whose best-scoring region is correct.

    Args:
        phrase_region_scores: (B, P, N) or (P, N) scores of P phrases against N regions (larger = better).
        gold_region_index: (B, P) / (P,) index of the annotated region of every phrase (index variant).
        mask: (B, P) / (P,) 1 for real phrases, 0 for padding (default: all real).
        region_mask: (B, N) / (N,) 1 for real regions; padded regions are never chosen (default: all real).
        region_boxes, gold_boxes: (B, N, 4) / (N, 4) and (B, P, 4) / (P, 4) boxes x1 y1 x2 y2 (box variant: a
            phrase is correct when the chosen region's box has IoU >= `iou_threshold` with its gold box).

    Give either `gold_region_index` or both boxes. Ties are pessimistic: a phrase counts as correct only if every
    region attaining its maximum score is correct.
    """
    scores = np.asarray(phrase_region_scores, dtype=np.float64)
    if scores.ndim == 2:
        scores = scores[None]
        unbatch = True
    elif scores.ndim == 3:
        unbatch = False
    else:
        raise ValueError(f"phrase_region_scores must have shape (B, P, N) or (P, N), got {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("phrase_region_scores contains NaN or infinite values")
    batch, n_phrases, n_regions = scores.shape

    def batched(value, name, tail):
        array = np.asarray(value)
        if unbatch:
            array = array[None]
        expected = (batch, *tail)
        if array.shape != expected:
            shown = expected[1:] if unbatch else expected
            raise ValueError(f"{name} must have shape {shown} to match phrase_region_scores {scores.shape[unbatch:]}, "
                             f"got {np.asarray(value).shape}")
        return array

    phrase_valid = np.ones((batch, n_phrases), bool) if mask is None else \
        batched(mask, "mask", (n_phrases,)).astype(bool)
    region_valid = np.ones((batch, n_regions), bool) if region_mask is None else \
        batched(region_mask, "region_mask", (n_regions,)).astype(bool)
    if np.any(phrase_valid & ~region_valid.any(axis=1, keepdims=True)):
        raise ValueError("a valid phrase belongs to an example whose region_mask has no valid region")

    by_index = gold_region_index is not None
    by_box = region_boxes is not None or gold_boxes is not None
    if by_index == by_box:
        raise ValueError("give either gold_region_index or both region_boxes and gold_boxes")
    if by_index:
        gold = batched(gold_region_index, "gold_region_index", (n_phrases,))
        if not np.issubdtype(gold.dtype, np.integer):
            raise ValueError(f"gold_region_index must hold integers, got dtype {gold.dtype}")
        gold_valid = gold[phrase_valid]
        if gold_valid.size and (gold_valid.min() < 0 or gold_valid.max() >= n_regions):
            raise ValueError(f"gold_region_index values of valid phrases must lie in [0, {n_regions})")
        correct_region = np.arange(n_regions)[None, None, :] == gold[..., None]  # (B, P, N)
    else:
        if region_boxes is None or gold_boxes is None:
            raise ValueError("the box variant needs both region_boxes and gold_boxes")
        regions = batched(region_boxes, "region_boxes", (n_regions, 4))
        golds = batched(gold_boxes, "gold_boxes", (n_phrases, 4))
        correct_region = box_iou(regions[:, None, :, :], golds[:, :, None, :]) >= iou_threshold  # (B, P, N)

    masked = np.where(region_valid[:, None, :], scores, -np.inf)
    is_max = (masked == masked.max(axis=-1, keepdims=True)) & region_valid[:, None, :]
    correct = np.all(correct_region | ~is_max, axis=-1)
    if not phrase_valid.any():
        raise ValueError("no valid phrase to score (mask is all zero or there are no phrases)")
    return float(correct[phrase_valid].mean())
