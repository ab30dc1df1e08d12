"""Batches for the HM-LSTM retrieval model from the captioning data sets.

`RetrievalCollator` turns a list of `CaptioningDataset` items (one image and its captions each) into the
`HMLSTMProcessor` tensors: one image row per item, every caption a sentence row, and `sentence_image_index`
pointing each sentence at its image (docs/CONVENTIONS.md, "Tensors between `HMLSTMProcessor` and `HMLSTMModel`").
"""
from __future__ import annotations

from .processing_hmlstm import HMLSTM_MODEL_INPUTS


class RetrievalCollator:
    """A list of `CaptioningDataset` items -> a dict of `HMLSTMModel` inputs.

    Image tensors have one row per item; `input_ids`, `attention_mask`, `phrase_spans` and `phrase_mask` one row per
    caption (all of the item's captions, or the first `captions_per_image`), and `sentence_image_index` the item
    each caption belongs to. `image_ids` and `references` (all the captions of each item, lists) travel along for
    evaluation. Boxes are used when every item has them. `with_phrases=False` skips phrase parsing (the flat model
    ignores phrases).
    """

    def __init__(self, processor, captions_per_image: int | None = None, with_phrases: bool = True):
        if captions_per_image is not None and (
                not isinstance(captions_per_image, int) or isinstance(captions_per_image, bool)
                or captions_per_image < 1):
            raise ValueError(f"captions_per_image must be None (all) or an integer >= 1, got {captions_per_image!r}")
        self.processor = processor
        self.captions_per_image = captions_per_image
        self.with_phrases = with_phrases

    def __call__(self, items):
        if not items:
            raise ValueError("RetrievalCollator got no item: a batch needs at least one image")
        for item in items:
            if not item["captions"]:
                raise ValueError(f"image {item['image_id']} has no caption: retrieval batches need one per image")
        boxes = [item.get("region_boxes") for item in items]
        batch = dict(self.processor(
            region_features=[item["region_features"] for item in items],
            region_boxes=boxes if all(b is not None for b in boxes) else None,
            sentences=[list(item["captions"])[: self.captions_per_image] for item in items],
            return_tensors="pt",
            return_phrases=self.with_phrases,
        ))
        batch["image_ids"] = [item["image_id"] for item in items]
        batch["references"] = [list(item["captions"]) for item in items]
        return batch


def retrieval_inputs(batch, device=None):
    """The keyword arguments of `HMLSTMModel.forward` in a collated `batch`, on `device`."""
    return {k: (v.to(device) if device is not None else v) for k, v in batch.items() if k in HMLSTM_MODEL_INPUTS}


__all__ = ["RetrievalCollator", "retrieval_inputs"]
