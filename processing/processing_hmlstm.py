"""HM-LSTM processor: region features, boxes and sentences in, the retrieval model's tensors out.

The tensors are those of docs/CONVENTIONS.md ("Tensors between `HMLSTMProcessor` and `HMLSTMModel`"): the image
side exactly as [`GLIEDProcessor`] makes it (`region_features`, `region_mask`, `region_boxes`, one row per image),
the text side `input_ids`, `attention_mask` (the sentence's words, no `<bos>`/`<eos>`), `phrase_spans`,
`phrase_mask` (the phrases of `processing/phrases.py` over the same words) and `sentence_image_index` (the image
row each sentence describes).

Phrase extraction (spaCy's parser, or the rule chunker) is the slow part: the spans of every sentence are
memoised by its normalised words, and new sentences are parsed in batches. The processor saves the phrase backend
it resolved to and the extractor's `info` (spaCy and model versions), so a loaded processor parses like the saved
one, or says why it cannot.
"""

import itertools
import warnings
from collections.abc import Mapping

import numpy as np
from transformers import BatchFeature

from .phrases import BACKENDS, PhraseExtractor
from .processing_glied import GLIEDProcessor, batch_tensors
from .tokenization_glied import register_tokenizer, split_caption

# the keyword arguments of `HMLSTMModel.forward` that a processor (or `RetrievalCollator`) batch provides
HMLSTM_MODEL_INPUTS = ("region_features", "region_mask", "region_boxes", "input_ids", "attention_mask",
                       "phrase_spans", "phrase_mask", "sentence_image_index")

# distinct sentences whose phrase spans one processor keeps (about 350 bytes each; COCO has 616,767 captions)
PHRASE_CACHE_SIZE = 1_000_000


def _load_phrase_extractor(backend, saved_info):
    """The `PhraseExtractor` of `backend`; `saved_info` is the `info` a saved processor recorded (None when new)."""
    model = None
    if saved_info and backend == "spacy" and saved_info.get("backend") == "spacy":
        model = saved_info.get("model")
    try:
        extractor = PhraseExtractor(backend, model)
    except ImportError as error:
        if not saved_info:
            raise
        raise ImportError(
            f"this processor was saved with the {backend!r} phrase backend ({saved_info}), which cannot be loaded "
            f"here: {error}. Install it, or load with phrase_backend='rules' (the model then sees other phrases "
            "than it was trained with)"
        ) from error
    if saved_info and dict(saved_info) != extractor.info:
        warnings.warn(
            f"the phrase extractor differs from the one this processor was saved with (saved {dict(saved_info)}, "
            f"here {extractor.info}): the phrases may differ from those the model was trained with",
            UserWarning,
            stacklevel=3,
        )
    return extractor


class _PhraseMemo:
    """A processor's phrase extractor and its memo of spans per sentence (keyed by the normalised words).

    Shared by deep copies (ProcessorMixin deep-copies the processor to save it); pickled with the memo but without
    the parser (spawned DataLoader workers load it again when they meet a new sentence).
    """

    def __init__(self, extractor, model=None):
        self.backend, self.model = extractor.backend, model
        self._extractor = extractor
        self._memo = {}

    @property
    def extractor(self):
        if self._extractor is None:
            self._extractor = PhraseExtractor(self.backend, self.model)
        return self._extractor

    def spans(self, word_lists):
        """Spans (tuples of `(start, end)`) of every word list; the sentences not seen before are parsed in one
        batch."""
        keys = [" ".join(words) for words in word_lists]
        found = [self._memo.get(key) for key in keys]
        todo = {key: words for key, words, spans in zip(keys, word_lists, found) if spans is None}
        if todo:
            parsed = self.extractor.word_spans(list(todo.values()))
            new = {key: tuple(map(tuple, spans)) for key, spans in zip(todo, parsed)}
            found = [new[key] if spans is None else spans for key, spans in zip(keys, found)]
            self._memo.update(new)
            for key in list(itertools.islice(self._memo, max(0, len(self._memo) - PHRASE_CACHE_SIZE))):
                del self._memo[key]  # the oldest entries first
        return found

    def __len__(self):
        return len(self._memo)

    def __deepcopy__(self, memo):
        return self

    def __getstate__(self):
        return {"backend": self.backend, "model": self.model, "memo": self._memo}

    def __setstate__(self, state):
        self.backend, self.model, self._memo = state["backend"], state["model"], state["memo"]
        self._extractor = None


class HMLSTMProcessor(GLIEDProcessor):
    r"""
    Turns region features, boxes and sentences into the tensors of `HMLSTMModel` (the Hierarchical Multimodal
    LSTM retrieval model): one row per image, one row per sentence, and the image row of every sentence.

    Args:
        tokenizer ([`GLIEDTokenizer`]): the word tokenizer (unknown words become `<unk>`).
        region_feature_size (`int`, defaults to 2048): width of one region feature; must equal the model's
            `config.region_feature_size` (see [`~HMLSTMProcessor.check_model_config`]).
        max_regions (`int`, defaults to 100): regions kept per image (the first ones).
        max_sentence_length (`int`, defaults to 32): words kept per sentence (the first ones); phrases past the cut
            are shortened or dropped.
        phrase_backend (`str`, defaults to `"auto"`): the phrase extractor of `processing/phrases.py`: `"spacy"`,
            `"rules"`, or `"auto"` (spaCy when it loads, else the rules). The processor keeps (and saves) the
            backend it resolved to.
        phrase_info (`dict`, *optional*): the `PhraseExtractor.info` a saved processor recorded (backend, spaCy and
            model versions). Set on loading: the same spaCy model is loaded, a different version warns, and a
            backend that cannot load raises an ImportError that says what to install. Leave it out otherwise.
        region_extractor (`dict`, *optional*): how raw images become region features, as in [`GLIEDProcessor`].
    """

    # the sub-processor class attributes of transformers 4.x (`attributes`, `tokenizer_class`) are GLIEDProcessor's

    def __init__(
        self,
        tokenizer=None,
        region_feature_size=2048,
        max_regions=100,
        max_sentence_length=32,
        phrase_backend="auto",
        phrase_info=None,
        region_extractor=None,
    ):
        length = max_sentence_length
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            raise ValueError(f"HMLSTMProcessor max_sentence_length must be an integer >= 1, got {length!r}")
        if phrase_backend not in BACKENDS:
            raise ValueError(f"HMLSTMProcessor phrase_backend must be one of {BACKENDS}, got {phrase_backend!r}")
        if phrase_info is not None and not isinstance(phrase_info, Mapping):
            raise ValueError(f"phrase_info must be a dict (PhraseExtractor.info) or None, got {phrase_info!r}")
        super().__init__(tokenizer, region_feature_size=region_feature_size, max_regions=max_regions,
                         region_extractor=region_extractor)
        self.max_sentence_length = max_sentence_length
        extractor = _load_phrase_extractor(phrase_backend, phrase_info)
        self.phrase_backend = extractor.backend
        self.phrase_info = dict(extractor.info)
        self._phrase_memo = _PhraseMemo(extractor, self.phrase_info.get("model"))

    @property
    def model_input_names(self):
        return list(HMLSTM_MODEL_INPUTS)

    def check_model_config(self, config):
        """Raise a ValueError when the model `config` (an `HMLSTMConfig`) disagrees with this processor."""
        if getattr(config, "model_type", None) != "hmlstm":
            raise ValueError(f"an HMLSTMProcessor feeds an HMLSTMConfig model, got a {type(config).__name__}")
        width = config.region_feature_size
        if width != self.region_feature_size:
            raise ValueError(
                f"config.region_feature_size is {width} but this processor's region features are "
                f"{self.region_feature_size} wide"
            )
        words = len(self.tokenizer)
        if config.vocab_size < words:
            raise ValueError(
                f"config.vocab_size is {config.vocab_size}, too small for the tokenizer's {words} words "
                "(ids past the embedding table)"
            )
        if config.pad_token_id != self.tokenizer.pad_token_id:
            raise ValueError(
                f"config.pad_token_id is {config.pad_token_id} but the tokenizer pads with id "
                f"{self.tokenizer.pad_token_id}"
            )

    def __call__(self, region_features=None, region_boxes=None, image_sizes=None, sentences=None,
                 return_tensors="pt", return_phrases=True):
        r"""
        Build the model inputs of a batch of images and/or sentences.

        Args:
            region_features, region_boxes, image_sizes: the images, exactly as [`GLIEDProcessor`] takes them (one
                row per image, padded to the largest region count, at most `max_regions`).
            sentences: one string per image; or one list of strings per image (several sentences per image,
                flattened image after image); or, with no images, a list of query sentences. At most
                `max_sentence_length` words are kept per sentence.
            return_tensors: `"pt"` (torch tensors) or `"np"` (numpy arrays).
            return_phrases: False leaves the phrases out (no parsing; `phrase_spans` and `phrase_mask` have P = 0):
                for the flat model, which ignores them.

        Returns:
            [`~transformers.BatchFeature`] with, for the images, `region_features` (B, N, F), `region_mask` (B, N)
            and `region_boxes` (B, N, 4); for the sentences `input_ids` and `attention_mask` (S, T) long,
            `phrase_spans` (S, P, 2) and `phrase_mask` (S, P) long (P may be 0); and `sentence_image_index` (S,)
            long, the image row of every sentence, when images are given or the sentences are lists per image.
        """
        return_tensors = getattr(return_tensors, "value", return_tensors)  # transformers.TensorType
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")
        if region_features is None and region_boxes is None and sentences is None:
            raise ValueError("nothing to process: give region_features and/or sentences")
        data, num_images = {}, None
        if region_features is not None or region_boxes is not None:
            data.update(super().__call__(region_features=region_features, region_boxes=region_boxes,
                                         image_sizes=image_sizes, return_tensors="np"))
            num_images = data["region_features"].shape[0]
        if sentences is not None:
            texts, image_index = self._flatten_sentences(sentences, num_images)
            data.update(self._sentence_arrays(texts, return_phrases))
            if image_index is not None:
                data["sentence_image_index"] = image_index
        return BatchFeature(batch_tensors(data, return_tensors))

    def phrases(self, sentence):
        """The phrases of one sentence as the model sees them (after the `max_sentence_length` cut):
        `[(phrase text, (start, end))]`, end exclusive, over the words of `split_caption(sentence)`."""
        (words,), (spans,) = self._words_and_spans([sentence])
        return [(" ".join(words[start:end]), (start, end)) for start, end in spans]

    def memoise_phrases(self, sentences):
        """Parse the phrases of `sentences` (a list of strings) into the memo, in batches, and return the number of
        distinct sentences memoised. Call it on the training captions before a DataLoader starts its workers: they
        inherit the memo (forked or pickled) instead of each parsing every caption again (spaCy: a few hundred
        sentences per second)."""
        if isinstance(sentences, str) or not isinstance(sentences, (list, tuple)):
            raise ValueError(f"sentences must be a list of strings, got {type(sentences).__name__}")
        self._words_and_spans(sentences)
        return len(self._phrase_memo)

    @staticmethod
    def _flatten_sentences(sentences, num_images):
        """Sentence texts, flat, and the image (or list) index of each; None for a flat list without images."""
        if isinstance(sentences, str) or not isinstance(sentences, (list, tuple)):
            raise ValueError(
                "sentences must be a list: one string per image, one list of strings per image, or query strings; "
                f"got {type(sentences).__name__} (wrap a single sentence as [text])"
            )
        if not sentences:
            raise ValueError("sentences is an empty list: the batch holds no sentence")
        lists = [isinstance(item, (list, tuple)) for item in sentences]
        if any(lists) and not all(lists):
            raise ValueError("sentences must be one string per image, or one list of strings per image, not a mixture")
        if num_images is not None and len(sentences) != num_images:
            raise ValueError(
                f"the inputs disagree on the number of images: region_features has {num_images}, sentences has "
                f"{len(sentences)}"
            )
        if not all(lists):
            return list(sentences), None if num_images is None else np.arange(len(sentences), dtype=np.int64)
        empty = [image for image, group in enumerate(sentences) if len(group) == 0]
        if empty:
            raise ValueError(f"image {empty[0]} has an empty list of sentences")
        image_index = np.repeat(np.arange(len(sentences), dtype=np.int64), [len(group) for group in sentences])
        return [text for group in sentences for text in group], image_index

    def _words_and_spans(self, texts, with_phrases=True):
        """The words of every sentence and its phrase spans (none without `with_phrases`), both cut at
        `max_sentence_length`."""
        word_lists = []
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"sentence {index} must be a string, got {type(text).__name__}: {text!r}")
            words = split_caption(text)
            if not words:
                raise ValueError(f"sentence {index} is empty (no word after removing punctuation): {text!r}")
            word_lists.append(words)
        limit = self.max_sentence_length
        if not with_phrases:
            return [words[:limit] for words in word_lists], [[] for _ in word_lists]
        # spans of the whole sentence: the parse does not depend on the cut
        span_lists = [[(start, min(end, limit)) for start, end in spans if start < limit]
                      for spans in self._phrase_memo.spans(word_lists)]
        return [words[:limit] for words in word_lists], span_lists

    def _sentence_arrays(self, texts, with_phrases=True):
        word_lists, span_lists = self._words_and_spans(texts, with_phrases)
        vocab, unk_id = self.tokenizer.get_vocab(), self.tokenizer.unk_token_id
        count, length = len(word_lists), max(len(words) for words in word_lists)
        phrases = max(len(spans) for spans in span_lists)  # 0 without phrases
        input_ids = np.full((count, length), self.tokenizer.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((count, length), dtype=np.int64)
        phrase_spans = np.zeros((count, phrases, 2), dtype=np.int64)
        phrase_mask = np.zeros((count, phrases), dtype=np.int64)
        for row, (words, spans) in enumerate(zip(word_lists, span_lists)):
            input_ids[row, : len(words)] = [vocab.get(word, unk_id) for word in words]
            attention_mask[row, : len(words)] = 1
            if spans:
                phrase_spans[row, : len(spans)] = spans
                phrase_mask[row, : len(spans)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "phrase_spans": phrase_spans,
                "phrase_mask": phrase_mask}


def register_hmlstm_auto_classes():
    """Register [`HMLSTMProcessor`] with `AutoProcessor` for `HMLSTMConfig`, so that `AutoProcessor.from_pretrained`
    finds the class a saved `processor_config.json` names. Safe to call more than once."""
    from transformers import AutoProcessor

    from modeling_glied import HMLSTMConfig

    register_tokenizer()
    AutoProcessor.register(HMLSTMConfig, HMLSTMProcessor, exist_ok=True)


__all__ = ["HMLSTM_MODEL_INPUTS", "HMLSTMProcessor", "register_hmlstm_auto_classes"]
