import copy
import inspect
import json
import pickle
import sys

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, BatchFeature

from modeling_glied import GLIEDConfig, HMLSTMConfig, HMLSTMModel
from processing import phrases as phrases_module
from processing.captioning_data import CaptioningDataset
from processing.feature_stores import FeatureStore, write_synthetic_feature_store
from processing.phrases import PhraseExtractor, phrase_texts
from processing.processing_glied import GLIEDProcessor
from processing.processing_hmlstm import HMLSTM_MODEL_INPUTS, HMLSTMProcessor
from processing.retrieval_data import RetrievalCollator, retrieval_inputs
from processing.tokenization_glied import GLIEDTokenizer, split_caption

F = 8
HORSE = "A man riding a horse on the beach."  # rules: "a man" (0, 2), "riding a horse" (2, 5), "on the beach" (5, 8)
CAPTIONS = [HORSE, "two dogs are playing with a red ball in the grass", "a cat sits on the red sofa"] * 2


def _spacy_available():
    try:
        phrases_module.resolve_backend("spacy")
        return True
    except ImportError:
        return False


needs_spacy = pytest.mark.skipif(not _spacy_available(), reason=f"spaCy model missing: {phrases_module.SPACY_INSTALL}")
BACKENDS = ["rules", pytest.param("spacy", marks=needs_spacy)]


def make_processor(**settings):
    values = dict(count_threshold=0, region_feature_size=F, max_regions=4, max_sentence_length=8,
                  phrase_backend="rules")
    values.update(settings)
    return HMLSTMProcessor.from_captions(CAPTIONS, **values)


@pytest.fixture
def processor():
    return make_processor()


def ids(processor, text):
    vocab = processor.tokenizer.get_vocab()
    return [vocab.get(word, 3) for word in split_caption(text)]


def features(*counts, seed=0):
    generator = np.random.default_rng(seed)
    return [generator.standard_normal((count, F)).astype(np.float32) for count in counts]


def test_one_sentence_per_image(processor):
    feats = features(2, 5)
    boxes = [[[0, 0, 0.5, 0.5]] * 2, [[0.1, 0.1, 0.2, 0.3]] * 5]
    out = processor(feats, region_boxes=boxes, sentences=["a cat", "two dogs on the red sofa"])
    assert isinstance(out, BatchFeature)
    assert set(out) == set(HMLSTM_MODEL_INPUTS)
    assert out["region_features"].shape == (2, 4, F) and out["region_features"].dtype == torch.float32
    assert out["region_boxes"].shape == (2, 4, 4) and out["region_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    # the image side is GLIEDProcessor's, untouched
    glied = GLIEDProcessor(processor.tokenizer, region_feature_size=F, max_regions=4)(feats, region_boxes=boxes)
    for name in ("region_features", "region_mask", "region_boxes"):
        assert torch.equal(out[name], glied[name])
    assert out["input_ids"].shape == (2, 6) and out["attention_mask"].shape == (2, 6)
    assert out["input_ids"].tolist() == [ids(processor, "a cat") + [0] * 4, ids(processor, "two dogs on the red sofa")]
    assert out["attention_mask"].tolist() == [[1, 1, 0, 0, 0, 0], [1] * 6]
    assert out["sentence_image_index"].tolist() == [0, 1]
    for name in ("input_ids", "attention_mask", "phrase_spans", "phrase_mask", "sentence_image_index"):
        assert out[name].dtype == torch.long, name
    assert out["phrase_spans"].shape == (2, 2, 2) and out["phrase_mask"].tolist() == [[1, 0], [1, 1]]
    assert out["phrase_spans"].tolist() == [[[0, 2], [0, 0]], [[0, 2], [2, 6]]]


def test_no_bos_eos_and_unknown_words_become_unk(processor):
    out = processor(sentences=["A zebra, riding a unicorn!", "a cat"], return_tensors="np")
    a, riding, cat = ids(processor, "a riding cat")
    assert out["input_ids"].tolist() == [[a, 3, riding, a, 3], [a, cat, 0, 0, 0]]
    bos, eos = processor.tokenizer.bos_token_id, processor.tokenizer.eos_token_id
    assert not np.isin(out["input_ids"], [bos, eos]).any()
    assert processor.batch_decode(out["input_ids"][1:]) == ["a cat"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_spans_are_the_phrases_of_the_split_caption_words(backend):
    processor = make_processor(phrase_backend=backend, max_sentence_length=32)
    sentences = [HORSE, "Two dogs are playing with a red ball in the grass.", "A woman, in a BLUE shirt -- sitting!"]
    expected = PhraseExtractor(backend)(sentences)
    out = processor(sentences=sentences, return_tensors="np")
    for row, (sentence, spans) in enumerate(zip(sentences, expected)):
        count = int(out["phrase_mask"][row].sum())
        assert out["phrase_mask"][row, :count].all() and count == len(spans) > 0
        assert [tuple(span) for span in out["phrase_spans"][row, :count].tolist()] == spans
        assert out["attention_mask"][row].sum() == len(split_caption(sentence))
        assert processor.phrases(sentence) == list(zip(phrase_texts(sentence, spans), spans))
    assert processor.phrases(HORSE) == [("a man", (0, 2)), ("riding a horse", (2, 5)), ("on the beach", (5, 8))]


def test_long_sentences_are_cut_and_their_phrases_shortened_or_dropped():
    processor = make_processor(max_sentence_length=6)
    out = processor(sentences=[HORSE, "a cat"])
    assert out["input_ids"].shape == (2, 6) and out["attention_mask"][0].tolist() == [1] * 6
    assert out["input_ids"][0].tolist() == ids(processor, HORSE)[:6]
    assert out["phrase_spans"][0].tolist() == [[0, 2], [2, 5], [5, 6]]  # "on the beach" -> "on"
    assert processor.phrases(HORSE) == [("a man", (0, 2)), ("riding a horse", (2, 5)), ("on", (5, 6))]
    out = make_processor(max_sentence_length=4)(sentences=[HORSE])
    assert out["phrase_spans"].tolist() == [[[0, 2], [2, 4]]] and out["phrase_mask"].tolist() == [[1, 1]]


def test_several_sentences_per_image_keep_one_row_per_image(processor):
    feats = features(3, 1)
    out = processor(feats, sentences=[["a cat", "a cat sits on the red sofa"], ("two dogs", "a man", "a ball")])
    assert out["sentence_image_index"].tolist() == [0, 0, 1, 1, 1]
    assert out["region_features"].shape == (2, 3, F) and out["input_ids"].shape[0] == 5
    assert out["phrase_spans"].shape[0] == 5 and out["phrase_mask"].shape[0] == 5
    assert processor.batch_decode(out["input_ids"]) == ["a cat", "a cat sits on the red sofa", "two dogs", "a man",
                                                        "a ball"]


def test_queries_without_images(processor):
    out = processor(sentences=["a cat", "the red sofa"])
    assert set(out) == {"input_ids", "attention_mask", "phrase_spans", "phrase_mask"}
    grouped = processor(sentences=[["a cat"], ["the red sofa", "a ball"]])
    assert grouped["sentence_image_index"].tolist() == [0, 1, 1]
    assert torch.equal(grouped["input_ids"][:2], out["input_ids"])


def test_sentences_without_phrases_give_an_empty_phrase_axis(processor):
    out = processor(sentences=["is on", "with"], return_tensors="np")
    assert out["phrase_spans"].shape == (2, 0, 2) and out["phrase_mask"].shape == (2, 0)
    assert out["phrase_spans"].dtype == np.int64 and out["input_ids"].shape == (2, 2)


def test_return_phrases_false_parses_nothing(processor, dataset):
    memo = processor._phrase_memo
    before = len(memo)
    out = processor(sentences=["a brand new sentence about a dog", "another one on a mat"], return_phrases=False)
    assert out["phrase_spans"].shape == (2, 0, 2) and out["phrase_mask"].shape == (2, 0)
    assert len(memo) == before  # nothing parsed
    with_phrases = processor(sentences=["a brand new sentence about a dog", "another one on a mat"])
    assert torch.equal(out["input_ids"], with_phrases["input_ids"]) and with_phrases["phrase_mask"].sum() > 0
    batch = RetrievalCollator(processor, with_phrases=False)([dataset[0], dataset[1]])
    assert batch["phrase_spans"].shape[1] == 0 and batch["sentence_image_index"].tolist() == [0, 0, 0, 1]


def test_return_tensors(processor):
    out = processor(features(2), sentences=["a cat"], return_tensors="np")
    assert all(isinstance(value, np.ndarray) for value in out.values())
    with pytest.raises(ValueError, match="return_tensors must be 'pt' or 'np'"):
        processor(sentences=["a cat"], return_tensors="tf")


def test_phrases_are_parsed_once_per_distinct_sentence(processor):
    memo = processor._phrase_memo
    calls = []
    parse = memo.extractor.word_spans
    memo.extractor.word_spans = lambda word_lists: calls.append(list(word_lists)) or parse(word_lists)
    first = processor(sentences=["A cat.", "a cat", "a red ball", "a cat"])
    assert calls == [[["a", "cat"], ["a", "red", "ball"]]]  # one batch, each distinct word sequence once
    second = processor(sentences=["a red ball", "A CAT!"])
    assert len(calls) == 1 and len(memo) == 2
    assert second["phrase_spans"].tolist() == first["phrase_spans"][[2, 0]].tolist()
    short = make_processor(max_sentence_length=2)
    assert short(sentences=["a red ball"])["phrase_spans"].tolist() == [[[0, 2]]]
    assert short._phrase_memo.spans([["a", "red", "ball"]]) == [((0, 3),)]  # the memo keeps whole sentences


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sentences=["a cat", ""]), "sentence 1 is empty"),
        (dict(sentences=["a cat", " ?! "]), r"sentence 1 is empty \(no word after removing punctuation\)"),
        (dict(sentences=["a cat", 7]), "sentence 1 must be a string, got int"),
        (dict(sentences=[["a cat"], ["a dog", None]]), "sentence 2 must be a string, got NoneType"),
        (dict(sentences="a cat"), r"sentences must be a list.*wrap a single sentence as \[text\]"),
        (dict(sentences=[]), "the batch holds no sentence"),
        (dict(sentences=["a cat", ["a dog"]]), "not a mixture"),
        (dict(sentences=[["a cat"], []]), "image 1 has an empty list of sentences"),
        (dict(region_features=[np.zeros((1, F))] * 2, sentences=["a cat"] * 3),
         "disagree on the number of images: region_features has 2, sentences has 3"),
        (dict(region_features=[np.zeros((1, F))] * 3, sentences=[["a cat"], ["a dog"]]),
         "region_features has 3, sentences has 2"),
        (dict(region_features=[np.zeros((1, 5))], sentences=["a cat"]), "have width 5, the model expects 8"),
        (dict(region_boxes=[[[0, 0, 1, 1]]], sentences=["a cat"]), "region_boxes were given without region_features"),
        (dict(region_features=[], sentences=[]), "no image"),
        (dict(), "nothing to process: give region_features and/or sentences"),
    ],
)
def test_bad_input_raises_a_named_value_error(processor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        processor(**kwargs)


BAD_SETTINGS = [
    (dict(max_sentence_length=0), "max_sentence_length must be an integer >= 1"),
    (dict(max_sentence_length=True), "max_sentence_length must be an integer"),
    (dict(phrase_backend="stanza"), r"phrase_backend must be one of \('auto', 'spacy', 'rules'\)"),
    (dict(phrase_info="rules"), "phrase_info must be a dict"),
    (dict(max_regions=0), "max_regions must be an integer >= 1"),
    (dict(region_extractor=["not", "a", "dict"]), "region_extractor must be a dict"),
]


@pytest.mark.parametrize("settings, message", BAD_SETTINGS)
def test_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        HMLSTMProcessor(GLIEDTokenizer(), **settings)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        HMLSTMProcessor()


def test_check_model_config(processor):
    words = len(processor.tokenizer)
    processor.check_model_config(HMLSTMConfig(vocab_size=words, region_feature_size=F))
    with pytest.raises(ValueError, match="region_feature_size is 2048 but this processor's region features are 8"):
        processor.check_model_config(HMLSTMConfig(vocab_size=words))
    with pytest.raises(ValueError, match=f"vocab_size is 5, too small for the tokenizer's {words} words"):
        processor.check_model_config(HMLSTMConfig(vocab_size=5, region_feature_size=F))
    with pytest.raises(ValueError, match="pad_token_id is 1 but the tokenizer pads with id 0"):
        processor.check_model_config(HMLSTMConfig(vocab_size=words, region_feature_size=F, pad_token_id=1))
    with pytest.raises(ValueError, match="feeds an HMLSTMConfig model, got a GLIEDConfig"):
        processor.check_model_config(GLIEDConfig(vocab_size=words, region_feature_size=F))


def same_outputs(first, second, **inputs):
    expected, got = first(**inputs, return_tensors="np"), second(**inputs, return_tensors="np")
    assert set(expected) == set(got)
    for key in expected:
        np.testing.assert_array_equal(expected[key], got[key])


INPUTS = dict(region_features=features(3, 6), region_boxes=[[[0, 0, 0.5, 0.5]] * 3, [[0, 0, 1, 1]] * 6],
              sentences=[[HORSE, "a zebra"], ["two dogs are playing with a red ball in the grass"]])


def test_save_load_round_trip_keeps_the_rules_backend(tmp_path):
    extractor = {"detector": "bottom-up faster r-cnn", "max_regions": 100}
    processor = make_processor(max_regions=5, max_sentence_length=7, region_extractor=extractor)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "HMLSTMProcessor"
    assert (saved["phrase_backend"], saved["phrase_info"]) == ("rules", {"backend": "rules"})
    assert (saved["max_sentence_length"], saved["max_regions"], saved["region_extractor"]) == (7, 5, extractor)
    assert "max_caption_length" not in saved and "max_attributes" not in saved
    loaded = HMLSTMProcessor.from_pretrained(tmp_path)
    assert type(loaded.tokenizer) is GLIEDTokenizer
    assert loaded.phrase_backend == "rules"  # not what "auto" would pick here
    assert (loaded.region_feature_size, loaded.max_regions, loaded.max_sentence_length) == (F, 5, 7)
    assert loaded.region_extractor == extractor
    assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    same_outputs(processor, loaded, **INPUTS)


@needs_spacy
def test_auto_resolves_and_saves_the_spacy_backend(tmp_path):
    processor = make_processor(phrase_backend="auto")
    assert processor.phrase_backend == "spacy" and processor.phrase_info == PhraseExtractor("spacy").info
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["phrase_backend"] == "spacy" and saved["phrase_info"]["model"] in phrases_module.SPACY_MODELS
    loaded = HMLSTMProcessor.from_pretrained(tmp_path)
    assert loaded.phrase_backend == "spacy" and loaded.phrase_info == processor.phrase_info
    same_outputs(processor, loaded, **INPUTS)
    # another parser version than the saved one warns
    saved["phrase_info"]["model_version"] = "0.0.1"
    (tmp_path / "processor_config.json").write_text(json.dumps(saved))
    with pytest.warns(UserWarning, match="phrase extractor differs from the one this processor was saved with"):
        HMLSTMProcessor.from_pretrained(tmp_path)


@needs_spacy
def test_loading_a_spacy_processor_without_spacy_says_what_to_do(tmp_path, monkeypatch):
    make_processor(phrase_backend="spacy").save_pretrained(tmp_path)
    phrases_module._load_spacy.cache_clear()
    monkeypatch.setitem(sys.modules, "spacy", None)  # makes `import spacy` fail
    try:
        with pytest.raises(ImportError, match=r"saved with the 'spacy' phrase backend .*pip install spacy .*"
                                              r"phrase_backend='rules'"):
            HMLSTMProcessor.from_pretrained(tmp_path)
        with pytest.warns(UserWarning, match="phrase extractor differs"):
            loaded = HMLSTMProcessor.from_pretrained(tmp_path, phrase_backend="rules")
        assert loaded.phrase_backend == "rules" and loaded.phrase_info == {"backend": "rules"}
        assert make_processor(phrase_backend="auto").phrase_backend == "rules"
    finally:
        phrases_module._load_spacy.cache_clear()


def test_auto_processor_dispatches_on_the_saved_class(tmp_path):
    hmlstm, glied = tmp_path / "hmlstm", tmp_path / "glied"
    processor = make_processor()
    processor.save_pretrained(hmlstm)
    HMLSTMConfig(vocab_size=len(processor.tokenizer), region_feature_size=F).save_pretrained(hmlstm)
    GLIEDProcessor(processor.tokenizer, region_feature_size=F).save_pretrained(glied)
    GLIEDConfig(vocab_size=len(processor.tokenizer), region_feature_size=F).save_pretrained(glied)
    loaded = AutoProcessor.from_pretrained(hmlstm)
    assert type(loaded) is HMLSTMProcessor and loaded.phrase_backend == "rules"
    assert type(loaded.tokenizer) is GLIEDTokenizer
    same_outputs(processor, loaded, **INPUTS)
    assert type(AutoProcessor.from_pretrained(glied)) is GLIEDProcessor


def test_copies_and_pickles_parse_the_same(processor):
    processor(sentences=[HORSE])
    clone = copy.deepcopy(processor)
    assert clone._phrase_memo is processor._phrase_memo  # deep copies (save_pretrained makes one) share the parser
    assert processor.memoise_phrases(["a cat", "A cat!", "two dogs"]) == 3
    restored = pickle.loads(pickle.dumps(processor))  # spawned DataLoader workers
    assert restored._phrase_memo._memo == processor._phrase_memo._memo and restored._phrase_memo._extractor is None
    assert restored.phrase_backend == "rules"
    same_outputs(processor, restored, **INPUTS)
    with pytest.raises(ValueError, match="sentences must be a list of strings"):
        processor.memoise_phrases("a cat")


# ---------------------------------------------------------------------------------------------------------------
# RetrievalCollator
# ---------------------------------------------------------------------------------------------------------------
RECORD_CAPTIONS = [
    ["a cat sits on the red sofa", "a cat", "the red sofa"],
    ["two dogs are playing with a red ball in the grass"],
    [HORSE, "a man on a horse"],
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = write_synthetic_feature_store(tmp_path_factory.mktemp("store") / "syn", 3, num_regions=(2, 6),
                                        feature_size=F, progress=False)
    records = [{"image_id": str(index), "captions": captions} for index, captions in enumerate(RECORD_CAPTIONS)]
    return CaptioningDataset(records, FeatureStore(out))


def test_collator_one_image_row_per_item_and_every_caption(processor, dataset):
    items = [dataset[0], dataset[1], dataset[2]]
    batch = RetrievalCollator(processor)(items)
    counts = [item["region_features"].shape[0] for item in items]
    assert batch["region_features"].shape == (3, min(max(counts), 4), F)
    assert batch["region_mask"].sum(dim=1).tolist() == [min(count, 4) for count in counts]
    assert batch["region_boxes"].shape == (3, batch["region_features"].shape[1], 4)
    torch.testing.assert_close(batch["region_features"][1, : min(counts[1], 4)],
                               torch.from_numpy(np.asarray(items[1]["region_features"][:4], dtype=np.float32)))
    assert batch["sentence_image_index"].tolist() == [0, 0, 0, 1, 2, 2]
    sentences = [text for captions in RECORD_CAPTIONS for text in captions]
    assert processor.batch_decode(batch["input_ids"]) == [
        " ".join(split_caption(text)[:8]) for text in sentences]
    assert batch["phrase_spans"].shape[:2] == batch["phrase_mask"].shape and batch["phrase_spans"].shape[0] == 6
    assert batch["image_ids"] == ["0", "1", "2"] and batch["references"] == RECORD_CAPTIONS
    inputs = retrieval_inputs(batch, device="cpu")
    assert set(inputs) == set(HMLSTM_MODEL_INPUTS) and all(isinstance(v, torch.Tensor) for v in inputs.values())


def test_collator_captions_per_image_and_errors(processor, dataset):
    batch = RetrievalCollator(processor, captions_per_image=1)([dataset[2], dataset[0]])
    assert batch["sentence_image_index"].tolist() == [0, 1]
    assert processor.batch_decode(batch["input_ids"]) == [" ".join(split_caption(HORSE)), RECORD_CAPTIONS[0][0]]
    assert batch["references"] == [RECORD_CAPTIONS[2], RECORD_CAPTIONS[0]]  # all references kept
    no_boxes = dict(dataset[1], region_boxes=None)
    assert "region_boxes" not in RetrievalCollator(processor)([dataset[0], no_boxes])
    with pytest.raises(ValueError, match="captions_per_image must be None"):
        RetrievalCollator(processor, captions_per_image=0)
    with pytest.raises(ValueError, match="image 1 has no caption"):
        RetrievalCollator(processor)([dict(dataset[1], captions=[])])
    with pytest.raises(ValueError, match="got no item"):
        RetrievalCollator(processor)([])


def test_collated_batch_feeds_a_tiny_hmlstm_model(processor, dataset):
    batch = RetrievalCollator(processor)([dataset[0], dataset[1], dataset[2]])
    config = HMLSTMConfig(vocab_size=len(processor.tokenizer), word_embedding_size=6, hidden_size=8, embedding_size=4,
                          region_feature_size=F)
    processor.check_model_config(config)
    torch.manual_seed(0)
    model = HMLSTMModel(config).eval()
    inputs = retrieval_inputs(batch)
    with torch.no_grad():
        images, regions = model.embed_images(inputs["region_features"], inputs["region_mask"], inputs["region_boxes"])
        sentences, phrases = model.embed_sentences(inputs["input_ids"], inputs["attention_mask"],
                                                   inputs["phrase_spans"], inputs["phrase_mask"])
    assert images.shape == (3, 4) and regions.shape == (3, batch["region_features"].shape[1], 4)
    assert sentences.shape == (6, 4) and phrases.shape == (6, batch["phrase_spans"].shape[1], 4)
    assert (images @ sentences.t()).shape == (3, 6)  # (images, sentences), as retrieval_metrics takes them
    if "sentence_image_index" not in inspect.signature(model.forward).parameters:
        pytest.skip("HMLSTMModel.forward does not take sentence_image_index yet")
    output = model(**inputs)
    assert output.image_sentence_similarity.shape == (3, 6) and torch.isfinite(output.loss)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_phrase_extraction_equals_one_by_one(backend):
    extractor = PhraseExtractor(backend)
    sentences = [HORSE, "", "a cat sits on the red sofa", " ?! ", "two dogs are playing with a red ball in the grass"]
    batched = extractor.word_spans([split_caption(text) for text in sentences], batch_size=2)
    assert batched == [extractor.spans(text) for text in sentences] and batched[1] == batched[3] == []
    assert batched[0] == [(0, 2), (2, 5), (5, 8)]
