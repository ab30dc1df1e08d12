"""GLIED processor: region features, boxes, attribute words and captions in, the model's tensors out.

The tensors and their names are those of docs/CONVENTIONS.md (`region_features`, `region_mask`, `region_boxes`,
`attribute_ids`, `attribute_mask`, `decoder_input_ids`, `labels`). The processor holds the caption tokenizer and
the region-feature settings, and saves them together (`processor_config.json` next to the tokenizer files).
"""

import collections
import json
import os
from collections.abc import Mapping

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin

from .tokenization_glied import SPECIAL_TOKENS, GLIEDTokenizer, register_tokenizer, split_caption

_PIXEL_TOLERANCE = 1.0  # boxes in pixels may overshoot the image border by this much (then clipped)
_NORMALISED_TOLERANCE = 1e-3  # boxes already in [0, 1] may overshoot by this much (then clipped)


def _is_array(value):
    return isinstance(value, (np.ndarray, torch.Tensor))


def _to_numpy(value, what, dtype=np.float32):
    """`value` (numpy array, torch tensor or nested lists of numbers) as a numpy array of `dtype`."""
    try:
        if isinstance(value, torch.Tensor):
            value = value.detach().to("cpu")
            value = value.float().numpy() if value.is_floating_point() else value.numpy()
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} is not a rectangular array of numbers ({error})") from None


def _split_images(value, name, item_ndim):
    """Per-image items of a batch input: a list/tuple with one item per image, or an array whose first axis is the
    batch (`item_ndim + 1` dimensions)."""
    if _is_array(value):
        if value.ndim != item_ndim + 1:
            raise ValueError(
                f"{name} as one array must have {item_ndim + 1} dimensions (batch first), got shape "
                f"{tuple(value.shape)}; pass a list with one item per image for a single image"
            )
        return [value[index] for index in range(value.shape[0])]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ValueError(f"{name} must be a list with one item per image or an array, got {type(value).__name__}")


def batch_tensors(data, return_tensors):
    """A processor's numpy outputs as torch tensors when `return_tensors='pt'`, else as they are."""
    if return_tensors == "pt":
        return {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in data.items()}
    return data


class GLIEDProcessor(ProcessorMixin):
    r"""
    Turns region features, boxes, attribute words and captions into the tensors of `GLIEDForCaptioning`, and
    generated ids back into captions.

    Args:
        tokenizer ([`GLIEDTokenizer`]): the caption (and attribute) tokenizer.
        region_feature_size (`int`, defaults to 2048): width of one region feature; must equal the model's
            `config.region_feature_size` (see [`~GLIEDProcessor.check_model_config`]).
        max_regions (`int`, defaults to 100): regions kept per image (the first ones; bottom-up features hold 10-100).
        max_attributes (`int`, defaults to 50): attribute words kept per image (the first ones).
        max_caption_length (`int`, defaults to 20): caption words kept for training (`<bos>`/`<eos>` not counted).
        region_extractor (`dict`, *optional*): JSON-serialisable description of how raw images become region
            features (detector, weights, settings), stored and saved with the processor. Not named
            `feature_extractor`: transformers' `ProcessorMixin` treats every `__init__` argument containing
            "feature_extractor" (or "tokenizer", "image_processor", ...) as a sub-processor object.
    """

    # transformers 4.x reads the sub-processors from these class attributes (5.x from the `__init__` signature)
    attributes = ["tokenizer"]
    tokenizer_class = "AutoTokenizer"

    def __init__(
        self,
        tokenizer=None,
        region_feature_size=2048,
        max_regions=100,
        max_attributes=50,
        max_caption_length=20,
        region_extractor=None,
    ):
        if tokenizer is None:
            raise ValueError(f"{type(self).__name__} needs a tokenizer (a GLIEDTokenizer)")
        for name, value, minimum in (
            ("region_feature_size", region_feature_size, 1),
            ("max_regions", max_regions, 1),
            ("max_attributes", max_attributes, 0),
            ("max_caption_length", max_caption_length, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{type(self).__name__} {name} must be an integer >= {minimum}, got {value!r}")
        if region_extractor is not None:
            if not isinstance(region_extractor, Mapping):
                raise ValueError(f"region_extractor must be a dict or None, got {type(region_extractor).__name__}")
            try:
                region_extractor = json.loads(json.dumps(dict(region_extractor)))
            except (TypeError, ValueError) as error:
                raise ValueError(f"region_extractor must be JSON-serialisable: {error}") from None
        self.region_feature_size = region_feature_size
        self.max_regions = max_regions
        self.max_attributes = max_attributes
        self.max_caption_length = max_caption_length
        self.region_extractor = region_extractor
        super().__init__(tokenizer)

    @classmethod
    def from_captions(cls, captions, count_threshold=5, extra_words=None, **settings):
        """Processor with a tokenizer built from training `captions` (words seen more than `count_threshold` times,
        plus `extra_words`, e.g. the attribute detector's words); `settings` are the processor's other arguments."""
        tokenizer = GLIEDTokenizer.from_captions(captions, count_threshold=count_threshold, extra_words=extra_words)
        return cls(tokenizer, **settings)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a saved processor (`processor_config.json` and the tokenizer files).

        `ProcessorMixin` loads the tokenizer through `AutoTokenizer`, which finds `GLIEDTokenizer` only once it is
        registered (otherwise it returns a generic `TokenizersBackend`): this registers it first.
        """
        register_tokenizer()
        local = os.path.isdir(pretrained_model_name_or_path)
        if local and not os.path.isfile(os.path.join(pretrained_model_name_or_path, "tokenizer.json")):
            raise FileNotFoundError(
                f"{pretrained_model_name_or_path} holds no {cls.__name__} (no tokenizer.json): save one there with "
                "processor.save_pretrained(...)"
            )
        saved_config = os.path.join(str(pretrained_model_name_or_path), "processor_config.json")
        if local and os.path.isfile(saved_config):
            with open(saved_config, encoding="utf-8") as handle:
                saved_class = json.load(handle).get("processor_class")
            if saved_class not in (None, cls.__name__):
                raise ValueError(f"{pretrained_model_name_or_path} holds a {saved_class}, not a {cls.__name__}: load it "
                                 f"with {saved_class}.from_pretrained or AutoProcessor.from_pretrained")
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if len(processor.tokenizer) <= len(SPECIAL_TOKENS):
            raise ValueError(f"{pretrained_model_name_or_path} holds no vocabulary: its tokenizer has only the "
                             f"special tokens; is it a {cls.__name__}?")
        return processor

    @property
    def model_input_names(self):
        return ["region_features", "region_mask", "region_boxes", "attribute_ids", "attribute_mask"]

    def check_region_extractor(self, extractor):
        """Raise a ValueError when a `RegionFeatureExtractor` makes features of another width than this processor's."""
        if extractor.feature_size != self.region_feature_size:
            raise ValueError(
                f"the region extractor gives features of width {extractor.feature_size}, the model expects "
                f"{self.region_feature_size} (processor.region_feature_size)"
            )

    def build_region_extractor(self, device="cpu"):
        """The `RegionFeatureExtractor` that `region_extractor` describes (how the model's images became features),
        checked against `region_feature_size`; None when the processor has no description (precomputed features)."""
        if not self.region_extractor:
            return None
        from .image_regions import RegionFeatureExtractor

        extractor = RegionFeatureExtractor.from_dict(dict(self.region_extractor), device=str(device))
        self.check_region_extractor(extractor)
        return extractor

    def check_model_config(self, config):
        """Raise a ValueError when the model `config` (a `GLIEDConfig`) disagrees with this processor."""
        if config.region_feature_size != self.region_feature_size:
            raise ValueError(
                f"the processor makes region features of width {self.region_feature_size}, the model expects "
                f"{config.region_feature_size} (config.region_feature_size)"
            )
        if config.vocab_size < len(self.tokenizer):
            raise ValueError(
                f"the tokenizer has {len(self.tokenizer)} words, the model only {config.vocab_size} "
                f"(config.vocab_size)"
            )
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id"):
            if getattr(config, name, None) != getattr(self.tokenizer, name):
                raise ValueError(
                    f"{name} is {getattr(self.tokenizer, name)} in the tokenizer and {getattr(config, name, None)} "
                    f"in the model config"
                )

    def __call__(
        self,
        region_features=None,
        region_boxes=None,
        image_sizes=None,
        attributes=None,
        captions=None,
        return_tensors="pt",
        return_unknown_words=False,
        return_image_index=False,
    ):
        r"""
        Build the model inputs of a batch of images.

        Args:
            region_features: per-image arrays (numpy, torch or nested lists) of shape `(N_i, F)`, `N_i` free, or
                one `(B, N, F)` array (every region valid). Padded to the largest `N_i` of the batch; images with
                more than `max_regions` regions keep their first `max_regions`.
            region_boxes: per-image `(N_i, 4)` boxes `x1, y1, x2, y2` (same `N_i` as the features), normalised to
                [0, 1], or in pixels when `image_sizes` is given.
            image_sizes: `(width, height)` of each image, in pixels: the boxes are divided by them (ignored without
                `region_boxes`).
            attributes: per image, a list of attribute words (or one string of words). Words outside the caption
                vocabulary are dropped (and counted), duplicates removed, at most `max_attributes` kept.
            captions: training captions, one string per image -> `decoder_input_ids` (`<bos>` + words) and `labels`
                (words + `<eos>`, padding -100), at most `max_caption_length` words. Several captions per image as a
                list of lists of strings (e.g. COCO's five): the captions are flattened, image after image, and each
                image's tensors repeated once per caption (so row `r` pairs caption `r` with its image, as
                self-critical training's `seq_per_img` does); `return_image_index=True` adds `image_index`, the
                image of each row.
            return_tensors: `"pt"` (torch tensors) or `"np"` (numpy arrays).
            return_unknown_words: add `unknown_words`, `{"captions": {word: count}, "attributes": {word: count}}`:
                caption words that became `<unk>` and attribute words that were dropped (pop it before calling the
                model).
            return_image_index: add `image_index` (see `captions`).

        Returns:
            [`~transformers.BatchFeature`] with `region_features` (B, N, F) float32 and `region_mask` (B, N) long,
            `region_boxes` (B, N, 4) float32, `attribute_ids` and `attribute_mask` (B, K) long (K may be 0),
            `decoder_input_ids` and `labels` (B, T) long, for the inputs given.
        """
        if return_tensors is not None and not isinstance(return_tensors, str):
            return_tensors = getattr(return_tensors, "value", return_tensors)  # transformers.TensorType
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")
        if region_boxes is not None and region_features is None:
            raise ValueError("region_boxes were given without region_features")

        inputs = {"region_features": region_features, "region_boxes": region_boxes, "image_sizes": image_sizes,
                  "attributes": attributes, "captions": captions}
        per_image = {}
        for name, value in inputs.items():
            if value is None:
                continue
            item_ndim = {"region_features": 2, "region_boxes": 2, "image_sizes": 1}.get(name)
            if item_ndim is not None:
                per_image[name] = _split_images(value, name, item_ndim)
            elif isinstance(value, (list, tuple)):
                per_image[name] = list(value)
            else:
                raise ValueError(f"{name} must be a list with one item per image, got {type(value).__name__}")
        if not per_image:
            raise ValueError("nothing to process: give region_features, attributes and/or captions")
        sizes = {name: len(items) for name, items in per_image.items()}
        if len(set(sizes.values())) > 1:
            listing = ", ".join(f"{name} has {size}" for name, size in sizes.items())
            raise ValueError(f"the inputs disagree on the number of images: {listing}")
        if min(sizes.values()) == 0:
            raise ValueError("the batch holds no image")

        data = {}
        unknown = {"captions": collections.Counter(), "attributes": collections.Counter()}
        if region_features is not None:
            arrays = self._region_arrays(per_image["region_features"])
            data["region_features"], data["region_mask"] = self._pad_regions(arrays)
            if region_boxes is not None:
                data["region_boxes"] = self._pad_boxes(per_image["region_boxes"], per_image.get("image_sizes"),
                                                       [array.shape[0] for array in arrays])
        if attributes is not None:
            data["attribute_ids"], data["attribute_mask"] = self._attribute_ids(per_image["attributes"],
                                                                                unknown["attributes"])
        image_index = None
        if captions is not None:
            caption_texts, image_index = self._flatten_captions(per_image["captions"])
            data["decoder_input_ids"], data["labels"] = self._caption_ids(caption_texts, unknown["captions"])
            if image_index is not None:
                for name in ("region_features", "region_mask", "region_boxes", "attribute_ids", "attribute_mask"):
                    if name in data:
                        data[name] = data[name][image_index]
        if return_image_index:
            if image_index is None:
                image_index = np.arange(next(iter(sizes.values())), dtype=np.int64)
            data["image_index"] = image_index
        batch = BatchFeature(batch_tensors(data, return_tensors))
        if return_unknown_words:
            batch["unknown_words"] = {kind: dict(counts.most_common()) for kind, counts in unknown.items()}
        return batch

    def _region_arrays(self, items):
        arrays = []
        for index, item in enumerate(items):
            array = _to_numpy(item, f"region_features of image {index}")
            if array.ndim != 2:
                raise ValueError(
                    f"region_features of image {index} must be a 2-D (regions, {self.region_feature_size}) array, "
                    f"got shape {array.shape}"
                )
            if array.shape[0] == 0:
                raise ValueError(f"region_features of image {index} hold no region")
            if array.shape[1] != self.region_feature_size:
                raise ValueError(
                    f"region_features of image {index} have width {array.shape[1]}, the model expects "
                    f"{self.region_feature_size}"
                )
            if not np.isfinite(array).all():
                raise ValueError(f"region_features of image {index} contain NaN or infinite values")
            arrays.append(array)
        return arrays

    def _pad_regions(self, arrays):
        counts = [min(array.shape[0], self.max_regions) for array in arrays]
        features = np.zeros((len(arrays), max(counts), self.region_feature_size), dtype=np.float32)
        mask = np.zeros((len(arrays), max(counts)), dtype=np.int64)
        for row, (array, count) in enumerate(zip(arrays, counts)):
            features[row, :count] = array[:count]
            mask[row, :count] = 1
        return features, mask

    def _pad_boxes(self, items, image_sizes, region_counts):
        kept = [min(count, self.max_regions) for count in region_counts]
        padded = np.zeros((len(items), max(kept), 4), dtype=np.float32)
        for index, item in enumerate(items):
            boxes = _to_numpy(item, f"region_boxes of image {index}", dtype=np.float64)
            if boxes.ndim != 2 or boxes.shape[1] != 4:
                raise ValueError(f"region_boxes of image {index} must have shape (regions, 4), got {boxes.shape}")
            if boxes.shape[0] != region_counts[index]:
                raise ValueError(
                    f"image {index} has {region_counts[index]} region features but {boxes.shape[0]} region_boxes"
                )
            if not np.isfinite(boxes).all():
                raise ValueError(f"region_boxes of image {index} contain NaN or infinite values")
            inverted = np.nonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))[0]
            if inverted.size:
                region = int(inverted[0])
                raise ValueError(
                    f"region_boxes of image {index}, region {region}: {boxes[region].tolist()} has x2 < x1 or "
                    f"y2 < y1 (boxes are x1, y1, x2, y2)"
                )
            if image_sizes is not None:
                size = _to_numpy(image_sizes[index], f"image_sizes of image {index}", dtype=np.float64)
                if size.shape != (2,) or not np.isfinite(size).all() or (size <= 0).any():
                    raise ValueError(
                        f"image_sizes of image {index} must be a positive (width, height), got {size.tolist()}"
                    )
                scale = np.array([size[0], size[1], size[0], size[1]])
                outside = (boxes < -_PIXEL_TOLERANCE) | (boxes > scale + _PIXEL_TOLERANCE)
                where = f"the image (width {size[0]:g}, height {size[1]:g})"
            else:
                scale = np.ones(4)
                outside = (boxes < -_NORMALISED_TOLERANCE) | (boxes > 1 + _NORMALISED_TOLERANCE)
                where = "[0, 1]; boxes in pixels need image_sizes=[(width, height), ...]"
            outside_rows = np.nonzero(outside.any(axis=1))[0]
            if outside_rows.size:
                region = int(outside_rows[0])
                raise ValueError(
                    f"region_boxes of image {index}, region {region}: {boxes[region].tolist()} lies outside {where}"
                )
            # normalised box = pixel box / (width, height, width, height), clipped to [0, 1]
            padded[index, : kept[index]] = np.clip(boxes[: kept[index]] / scale, 0.0, 1.0)
        return padded

    def _attribute_ids(self, items, unknown):
        vocab = self.tokenizer.get_vocab()
        rows = []
        for index, item in enumerate(items):
            if item is None:
                item = []
            elif isinstance(item, str):
                item = [item]
            elif not isinstance(item, (list, tuple)):
                raise ValueError(
                    f"attributes of image {index} must be a list of words or a string, got {type(item).__name__}"
                )
            ids = []
            for entry in item:
                if not isinstance(entry, str):
                    raise ValueError(f"attributes of image {index} must be words (strings), got {entry!r}")
                for word in split_caption(entry):
                    word_id = vocab.get(word)
                    if word_id is None:
                        unknown[word] += 1
                    elif word_id not in ids:
                        ids.append(word_id)
            rows.append(ids[: self.max_attributes])
        width = max(len(ids) for ids in rows)
        attribute_ids = np.full((len(rows), width), self.tokenizer.pad_token_id, dtype=np.int64)
        attribute_mask = np.zeros((len(rows), width), dtype=np.int64)
        for row, ids in enumerate(rows):
            attribute_ids[row, : len(ids)] = ids
            attribute_mask[row, : len(ids)] = 1
        return attribute_ids, attribute_mask

    @staticmethod
    def _flatten_captions(items):
        """Captions as one string per image, or lists of strings per image (flattened, with the image index)."""
        if all(isinstance(item, str) for item in items):
            return list(items), None
        if not all(isinstance(item, (list, tuple)) for item in items):
            raise ValueError(
                "captions must be one string per image, or one list of strings per image, not a mixture"
            )
        texts, image_index = [], []
        for index, item in enumerate(items):
            if len(item) == 0:
                raise ValueError(f"image {index} has an empty list of captions")
            for text in item:
                if not isinstance(text, str):
                    raise ValueError(f"captions of image {index} must be strings, got {text!r}")
                texts.append(text)
                image_index.append(index)
        return texts, np.asarray(image_index, dtype=np.int64)

    def _caption_ids(self, texts, unknown):
        vocab = self.tokenizer.get_vocab()
        unk_id = self.tokenizer.unk_token_id
        rows = []
        for index, text in enumerate(texts):
            words = split_caption(text)
            if not words:
                raise ValueError(f"caption {index} is empty (no word after removing punctuation): {text!r}")
            words = words[: self.max_caption_length]
            ids = []
            for word in words:
                word_id = vocab.get(word)
                if word_id is None:
                    unknown[word] += 1
                    word_id = unk_id
                ids.append(word_id)
            rows.append(ids)
        length = max(len(ids) for ids in rows) + 1
        decoder_input_ids = np.full((len(rows), length), self.tokenizer.pad_token_id, dtype=np.int64)
        labels = np.full((len(rows), length), -100, dtype=np.int64)
        for row, ids in enumerate(rows):
            # decoder input = <bos> + words (shifted right); label = words + <eos>
            decoder_input_ids[row, : len(ids) + 1] = [self.tokenizer.bos_token_id] + ids
            labels[row, : len(ids) + 1] = ids + [self.tokenizer.eos_token_id]
        return decoder_input_ids, labels

    def _cut_at_eos(self, token_ids, skip_special_tokens):
        if isinstance(token_ids, (torch.Tensor, np.ndarray)):
            token_ids = token_ids.tolist()
        ids = [int(token_id) for token_id in token_ids if int(token_id) >= 0]  # -100 label padding
        eos = self.tokenizer.eos_token_id
        start = 1 if ids and ids[0] == self.tokenizer.bos_token_id else 0
        if eos in ids[start:]:
            end = ids.index(eos, start)
            ids = ids[: end if skip_special_tokens else end + 1]
        return ids

    def decode(self, token_ids, skip_special_tokens=True, **kwargs):
        """Caption of one id sequence, up to its first `<eos>` (included unless `skip_special_tokens`); label padding
        (-100) is ignored. With `skip_special_tokens` every special token is left out, `<unk>` included (the
        tokenizer's rule)."""
        return self.tokenizer.decode(self._cut_at_eos(token_ids, skip_special_tokens),
                                     skip_special_tokens=skip_special_tokens, **kwargs)

    def batch_decode(self, sequences, skip_special_tokens=True, **kwargs):
        """Captions of a batch of id sequences (e.g. `generate` output or `labels`), each up to its first `<eos>`."""
        if isinstance(sequences, (torch.Tensor, np.ndarray)):
            if sequences.ndim != 2:
                raise ValueError(f"batch_decode expects a (batch, length) array, got shape {tuple(sequences.shape)}")
            sequences = sequences.tolist()
        return [self.decode(ids, skip_special_tokens=skip_special_tokens, **kwargs) for ids in sequences]


def register_auto_classes():
    """Register GLIED with the transformers Auto classes: `AutoConfig` ("glied" -> `GLIEDConfig`), `AutoTokenizer`
    and `AutoProcessor` (`GLIEDConfig` -> `GLIEDTokenizer`, `GLIEDProcessor`). Safe to call more than once."""
    from transformers import AutoProcessor

    from modeling_glied import GLIEDConfig

    register_tokenizer()
    AutoProcessor.register(GLIEDConfig, GLIEDProcessor, exist_ok=True)


__all__ = ["GLIEDProcessor", "register_auto_classes"]
