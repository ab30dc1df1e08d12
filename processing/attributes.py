"""Attribute words `A` of GLIED: the detector vocabulary, its training labels, its metrics, and attribute maps.

- [`build_attribute_vocabulary`]: the most frequent content words of the training captions (document frequency
  over images, function words left out), the vocabulary of `GLIEDAttributeDetector` (Fang et al. 2015 use the
  1,000 most frequent words).
- [`attribute_labels`]: multi-hot image-level targets: word `j` is positive for an image when any of its captions
  contains it.
- [`precision_recall_at_k`]: precision@k, recall@k and mean average precision of predicted word probabilities.
- [`AttributeMap`]: the per-image attribute words as a JSON file `{"<image_id>": ["word", ...]}`, written by
  `examples/train_attributes.py` or supplied by users instead of a detector; it feeds `GLIEDProcessor(attributes=...)`.

Captions are split into words by the caption rule of the tokenizer (`tokenization_glied.split_caption`).
"""

import collections
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from .arguments import positive_int
from .tokenization_glied import split_caption

# Function words: articles and determiners, prepositions, pronouns, auxiliaries and modals, conjunctions, a few
# adverbs and particles, and the common contractions. Content words (nouns, verbs, adjectives, numbers) stay.
STOP_WORDS = frozenset(
    """
    a an the this that these those some any all both each every either neither no another other such
    about above across after against along alongside amid among around as at atop before behind below beneath
    beside besides between beyond by despite down during except for from in inside into near next of off on onto
    out outside over past per since than through throughout till to toward towards under underneath until
    unto up upon via with within without
    i me my mine myself you your yours yourself yourselves he him his himself she her hers herself it its itself
    we us our ours ourselves they them their theirs themselves who whom whose which what whatever whoever
    someone somebody something anyone anybody anything everyone everybody everything nobody nothing
    one's oneself
    is are was were be been being am isn't aren't wasn't weren't
    has have had having hasn't haven't hadn't do does did doing done don't doesn't didn't
    can could will would shall should may might must can't cannot couldn't won't wouldn't shouldn't
    and or but nor so yet if because while whereas though although unless whether then also either
    when where why how there here
    not very too just only quite rather really still even almost
    it's that's there's here's what's who's he's she's they're we're you're i'm they've we've i've you've
    let's
    """.split()
)


def _caption_lists(captions_per_image):
    """Per image, its list of caption strings (a Mapping's values in order, a lone string as one caption)."""
    if isinstance(captions_per_image, Mapping):
        captions_per_image = list(captions_per_image.values())
    if isinstance(captions_per_image, str) or not isinstance(captions_per_image, Iterable):
        raise ValueError(
            "captions_per_image must be a list with one entry per image (a caption string or a list of captions), "
            f"got {type(captions_per_image).__name__}"
        )
    images = []
    for index, captions in enumerate(captions_per_image):
        if isinstance(captions, str):
            captions = [captions]
        captions = list(captions) if isinstance(captions, Iterable) else captions
        if not isinstance(captions, list) or any(not isinstance(caption, str) for caption in captions):
            raise ValueError(f"the captions of image {index} must be a string or a list of strings, got {captions!r}")
        images.append(captions)
    return images


def _image_words(captions):
    """The set of normalised words of one image's captions."""
    return {word for caption in captions for word in split_caption(caption)}


def build_attribute_vocabulary(captions_per_image, size=1000, stopwords=STOP_WORDS):
    """The detector vocabulary: the `size` content words found in the most images' captions.

    Args:
        captions_per_image: one entry per training image: its captions (list of strings) or one caption string;
            or a Mapping image_id -> captions.
        size: the largest vocabulary size (fewer words when the captions hold fewer content words).
        stopwords: words left out (default [`STOP_WORDS`], English function words); normalised like captions.
            `None` or `()` keeps every word.

    Returns:
        list of words ordered by decreasing document frequency (the number of images whose captions contain the
        word, however often), alphabetically among equal frequencies: deterministic and independent of the order
        of images and captions.
    """
    positive_int(size, "size")
    if stopwords is None:
        stopwords = ()
    if isinstance(stopwords, str) or not isinstance(stopwords, Iterable):
        raise ValueError(f"stopwords must be a collection of words, got {type(stopwords).__name__}: {stopwords!r}")
    excluded = set()
    for word in stopwords:
        if not isinstance(word, str):
            raise ValueError(f"stopwords must be strings, got {word!r}")
        excluded.update(split_caption(word))
    document_frequency = collections.Counter()
    for captions in _caption_lists(captions_per_image):
        document_frequency.update(_image_words(captions) - excluded)
    ranked = sorted(document_frequency, key=lambda word: (-document_frequency[word], word))
    return ranked[:size]


def _check_vocabulary(vocabulary):
    if isinstance(vocabulary, str) or not isinstance(vocabulary, Iterable):
        raise ValueError(f"vocabulary must be a list of words, got {type(vocabulary).__name__}")
    vocabulary = list(vocabulary)
    index = {}
    for position, word in enumerate(vocabulary):
        if not isinstance(word, str) or split_caption(word) != [word]:
            raise ValueError(
                f"vocabulary entry {position} ({word!r}) is not a normalised caption word (lower-case, one word, "
                f"no punctuation): it could never match a caption"
            )
        if word in index:
            raise ValueError(f"vocabulary holds {word!r} twice (positions {index[word]} and {position})")
        index[word] = position
    return index


def attribute_labels(captions_per_image, vocabulary, dtype=np.float32):
    """Multi-hot targets of the detector: `labels[i, j] = 1` when a caption of image `i` contains `vocabulary[j]`.

    Args:
        captions_per_image: as for [`build_attribute_vocabulary`] (one entry per image, or a Mapping).
        vocabulary: the detector words (e.g. `config.attribute_words`), normalised caption words.
        dtype: of the result; `np.uint8` or `bool` keep COCO's 113k x 1,000 training labels at 113 MB.

    Returns:
        array of shape (number of images, len(vocabulary)), float32 by default.
    """
    index = _check_vocabulary(vocabulary)
    images = _caption_lists(captions_per_image)
    labels = np.zeros((len(images), len(index)), dtype=dtype)
    for row, captions in enumerate(images):
        columns = [index[word] for word in _image_words(captions) if word in index]
        labels[row, columns] = 1
    return labels


def _as_matrix(values, name):
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().float().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (images, words), got shape {array.shape}")
    return array


def precision_recall_at_k(probabilities, labels, k=(5, 10, 20)):
    """Precision@k and recall@k of the top-k words of each image, and mean average precision.

    Args:
        probabilities: (images, words) scores (numpy or torch), e.g. `GLIEDAttributeDetector(...).probabilities`.
        labels: (images, words) multi-hot 0/1 targets, e.g. from [`attribute_labels`].
        k: one cut-off or several; each at most the number of words.

    Returns:
        dict with, for each k, `"precision@k"` = (correct words in every image's top k) / (k x images) and
        `"recall@k"` = (correct words in every image's top k) / (positive words over all images), both micro-averaged
        over images (ranks: decreasing score, vocabulary order among ties); and `"mAP"`: for each word with at least
        one positive image, the average precision of the images ranked by that word's score (mean of the
        precision at the rank of each positive image, ties in image order), averaged over those words
        (the measure of Fang et al. 2015). Values are floats in [0, 1]; NaN where nothing defines them (no positive
        label at all).
    """
    scores = _as_matrix(probabilities, "probabilities")
    targets = _as_matrix(labels, "labels")
    if scores.shape != targets.shape:
        raise ValueError(f"probabilities have shape {scores.shape} but labels {targets.shape}")
    if not np.isin(targets, (0.0, 1.0)).all():
        raise ValueError("labels must be multi-hot: every entry 0 or 1")
    if np.isnan(scores).any():
        raise ValueError("probabilities contain NaN")
    cutoffs = [k] if isinstance(k, int) and not isinstance(k, bool) else list(k)
    num_images, num_words = scores.shape
    for cutoff in cutoffs:
        if not isinstance(cutoff, int) or isinstance(cutoff, bool) or not 0 < cutoff <= num_words:
            raise ValueError(f"k must be integers in [1, number of words = {num_words}], got {cutoff!r}")
    if num_images == 0:
        raise ValueError("precision_recall_at_k needs at least one image")

    metrics = {}
    order = np.argsort(-scores, axis=1, kind="stable")  # per image, words by decreasing score
    ranked_targets = np.take_along_axis(targets, order, axis=1)
    total_positive = targets.sum()
    for cutoff in cutoffs:
        hits = ranked_targets[:, :cutoff].sum()
        metrics[f"precision@{cutoff}"] = float(hits / (cutoff * num_images))
        metrics[f"recall@{cutoff}"] = float(hits / total_positive) if total_positive else float("nan")

    # per word: images by decreasing score; AP = mean over positive images of (positives so far / rank)
    image_order = np.argsort(-scores, axis=0, kind="stable")
    ranked = np.take_along_axis(targets, image_order, axis=0)
    positives_so_far = np.cumsum(ranked, axis=0)
    ranks = np.arange(1, num_images + 1, dtype=np.float64)[:, None]
    positives = ranked.sum(axis=0)
    has_positive = positives > 0
    average_precision = (ranked * positives_so_far / ranks).sum(axis=0)[has_positive] / positives[has_positive]
    metrics["mAP"] = float(average_precision.mean()) if has_positive.any() else float("nan")
    return metrics


class AttributeMap(Mapping):
    """Attribute words per image: `image_id -> [word, ...]`, stored as a JSON object `{"<image_id>": [...]}`.

    Image ids are strings (JSON keys); looking up an int id finds its string form (`amap[391895]` is
    `amap["391895"]`). The words are those a detector predicted (most probable first) or those a user supplies;
    `GLIEDProcessor(attributes=amap.words(image_ids))` turns them into `attribute_ids`.
    """

    def __init__(self, words_by_image=None):
        self._words = {}
        for image_id, words in (words_by_image or {}).items():
            self._words[self._key(image_id)] = self._check_words(image_id, words)

    @staticmethod
    def _key(image_id):
        if isinstance(image_id, bool) or not isinstance(image_id, (str, int)):
            raise ValueError(f"image ids must be strings or integers, got {image_id!r}")
        return str(image_id)

    @staticmethod
    def _check_words(image_id, words):
        if isinstance(words, str) or not isinstance(words, (list, tuple)):
            raise ValueError(f"the attribute words of image {image_id!r} must be a list of strings, got {words!r}")
        for word in words:
            if not isinstance(word, str):
                raise ValueError(f"the attribute words of image {image_id!r} must be strings, got {word!r}")
        return list(words)

    @classmethod
    def from_predictions(cls, image_ids, predictions):
        """Map from `GLIEDAttributeDetector.predict` output: `predictions[i]` is a list of `(word, probability)`
        pairs (or of words) for `image_ids[i]`; probabilities are dropped, order kept."""
        image_ids, predictions = list(image_ids), list(predictions)
        if len(image_ids) != len(predictions):
            raise ValueError(f"{len(image_ids)} image ids but {len(predictions)} predictions")
        words_by_image = {}
        for image_id, predicted in zip(image_ids, predictions):
            key = cls._key(image_id)
            if key in words_by_image:
                raise ValueError(f"image id {image_id!r} occurs twice")
            words_by_image[key] = [entry if isinstance(entry, str) else entry[0] for entry in predicted]
        return cls(words_by_image)

    @classmethod
    def load(cls, path):
        """Read a JSON attribute map; FileNotFoundError when missing, ValueError when not `{id: [words]}`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"attribute map not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"attribute map {path} is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"attribute map {path} must hold a JSON object {{image_id: [words]}}, got {type(data).__name__}")
        return cls(data)

    def save(self, path):
        """Write the map as JSON (parent folders created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self._words), encoding="utf-8")
        return path

    def words(self, image_ids, missing="error"):
        """The word lists of `image_ids`, in order; an id without an entry raises a KeyError (`missing="error"`)
        or gets no words (`missing="empty"`)."""
        if missing not in ("error", "empty"):
            raise ValueError(f"missing must be 'error' or 'empty', got {missing!r}")
        result = []
        for image_id in image_ids:
            key = self._key(image_id)
            if key not in self._words and missing == "error":
                raise KeyError(f"no attribute words for image {image_id!r} in the attribute map")
            result.append(list(self._words.get(key, [])))
        return result

    def __getitem__(self, image_id):
        key = self._key(image_id)
        if key not in self._words:
            raise KeyError(f"no attribute words for image {image_id!r} in the attribute map")
        return self._words[key]

    def __contains__(self, image_id):
        return isinstance(image_id, (str, int)) and not isinstance(image_id, bool) and str(image_id) in self._words

    def __iter__(self):
        return iter(self._words)

    def __len__(self):
        return len(self._words)

    def __repr__(self):
        return f"AttributeMap({len(self)} images)"


__all__ = ["STOP_WORDS", "AttributeMap", "attribute_labels", "build_attribute_vocabulary", "precision_recall_at_k"]
