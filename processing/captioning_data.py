"""Captioning data sets for training and evaluation: caption records + a feature store + attribute words.

`CaptioningDataset` yields one image at a time (its regions from the `FeatureStore` (rows read with pread), its attribute
words, its reference captions); `CaptioningCollator` turns a list of them into model inputs with the
`GLIEDProcessor`, the captions of each image as separate rows pointing back at their image
(`caption_image_index`), so the encoder runs once per image.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .captions import load_captions, missing_image_ids
from .feature_stores import FeatureStore
from .tokenization_glied import split_caption


def load_attribute_map(path) -> dict[str, list[str]]:
    """`{image_id: [attribute words]}` from a JSON file (what `examples/train_attributes.py` writes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"attribute word file {path} does not exist")
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(f"{path} must map image ids to lists of attribute words")
    return {str(k): [str(w) for w in v] for k, v in data.items()}


class CaptioningDataset(torch.utils.data.Dataset):
    """The images of one split: `records` (from `processing.captions`) whose features are in `feature_store`."""

    def __init__(self, records, feature_store: FeatureStore, attributes: dict | None = None,
                 captions_per_image: int | None = None):
        missing = missing_image_ids(records, feature_store)
        if missing:
            raise ValueError(f"{len(missing)} images have captions but no features, e.g. {missing[:5]}")
        self.records = list(records)
        self.feature_store = feature_store
        self.attributes = attributes
        self.captions_per_image = captions_per_image

    @classmethod
    def from_files(cls, captions_path, split, feature_store, attributes_path=None, max_images=None, **kwargs):
        records = load_captions(captions_path, split=split)
        if max_images:
            records = records[:max_images]
        store = feature_store if isinstance(feature_store, FeatureStore) else FeatureStore(feature_store)
        attributes = load_attribute_map(attributes_path) if attributes_path else None
        return cls(records, store, attributes, **kwargs)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        record = self.records[index]
        image_id = str(record["image_id"])
        features = self.feature_store[image_id]
        captions = list(record["captions"])
        if self.captions_per_image:
            captions = captions[: self.captions_per_image]
        return {
            "image_id": image_id,
            "region_features": features["region_features"],
            "region_boxes": features.get("region_boxes"),
            "attributes": list(self.attributes.get(image_id, [])) if self.attributes is not None else None,
            "captions": captions,
        }

    def references(self) -> dict[str, list[str]]:
        """`{image_id: [reference captions]}` of the split (raw text, for the COCO evaluation)."""
        return {str(r["image_id"]): list(r["captions"]) for r in self.records}

    def tokenized_references(self) -> dict[str, list[str]]:
        """The references as space-joined words of the caption tokenizer (for CIDEr-D rewards)."""
        return {image_id: [" ".join(split_caption(c)) for c in refs] for image_id, refs in self.references().items()}


class CaptioningCollator:
    """A list of `CaptioningDataset` items -> a dict of model inputs.

    Image tensors have one row per image; with `with_captions`, `decoder_input_ids`/`labels` have one row per
    caption and `caption_image_index` says which image each caption row belongs to. `image_ids` and
    `references` (lists) travel along for evaluation and rewards.
    """

    def __init__(self, processor, with_captions: bool = True):
        self.processor = processor
        self.with_captions = with_captions

    def __call__(self, items):
        boxes = [item["region_boxes"] for item in items]
        use_boxes = all(b is not None for b in boxes)
        attributes = [item["attributes"] for item in items]
        batch = dict(self.processor(
            region_features=[item["region_features"] for item in items],
            region_boxes=boxes if use_boxes else None,
            attributes=attributes if all(a is not None for a in attributes) else None,
            return_tensors="pt",
        ))
        if self.with_captions:
            captions = self.processor(captions=[item["captions"] for item in items], return_image_index=True,
                                      return_tensors="pt")
            batch["decoder_input_ids"] = captions["decoder_input_ids"]
            batch["labels"] = captions["labels"]
            batch["caption_image_index"] = captions["image_index"]
        batch["image_ids"] = [item["image_id"] for item in items]
        batch["references"] = [item["captions"] for item in items]
        return batch


MODEL_INPUTS = ("region_features", "region_mask", "region_boxes", "attribute_ids", "attribute_mask")


def model_inputs(batch, device=None):
    """The image tensors of a collated batch, on `device`."""
    return {k: (v.to(device) if device is not None else v) for k, v in batch.items() if k in MODEL_INPUTS}


__all__ = ["CaptioningCollator", "CaptioningDataset", "MODEL_INPUTS", "load_attribute_map", "model_inputs"]
