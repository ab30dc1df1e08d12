"""The image-to-text pipeline: captions of raw images, paths, lists and feature dicts equal those of generate()."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers import pipeline

import processing  # noqa: F401  (registers the pipeline)
from modeling_glied import GLIEDAttributeDetector, GLIEDAttributeDetectorConfig, GLIEDConfig, GLIEDForCaptioning
from processing import GLIEDProcessor
from processing.image_regions import RegionFeatureExtractor
from processing.pipeline_glied import GLIEDImageToTextPipeline, _FALLBACK
from processing.quickstart_data import prepare_quickstart_data

OPTIONS = dict(num_beams=2, max_new_tokens=6)


# ---------------------------------------------------------------------------------------------------------------
# a tiny GLIED on the quick-start data (also used by test_hub_push.py and test_caption_cli.py)
# ---------------------------------------------------------------------------------------------------------------
def tiny_model(processor, seed=0):
    """A random GLIED small enough for tests; initializer_range 0.5 makes its captions differ between images."""
    torch.manual_seed(seed)
    config = GLIEDConfig(vocab_size=len(processor.tokenizer), hidden_size=32, num_attention_heads=4,
                         intermediate_size=64, region_feature_size=processor.region_feature_size,
                         initializer_range=0.5)
    return GLIEDForCaptioning(config).eval()


def build_tiny_glied(root, seed=0):
    """Quick-start images, a processor that knows their region extractor, and a tiny model saved with it."""
    root = Path(root)
    data = prepare_quickstart_data(root / "data", num_train=60, num_val=10, num_test=10, progress=False)
    records = json.loads(Path(data["dataset_json"]).read_text())["images"]
    captions = [sentence["raw"] for record in records for sentence in record["sentences"]]
    processor = GLIEDProcessor.from_captions(captions, count_threshold=0, region_feature_size=128,
                                             region_extractor=data["region_extractor"])
    model = tiny_model(processor, seed)
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    images = sorted(str(path) for path in (root / "data" / "test").glob("*.png"))
    return {"model_dir": model_dir, "model": model, "processor": processor, "images": images,
            "region_extractor": data["region_extractor"], "data": data}


def reference_captions(model, processor, extractor, images, attributes=None, **options):
    """Captions the long way: extractor -> processor -> generate -> batch_decode, all images as one batch."""
    outputs = extractor([Image.open(path) if isinstance(path, str) else path for path in images])
    if attributes is None:
        attributes = RegionFeatureExtractor.attribute_candidates(outputs)
    inputs = processor(region_features=[o["region_features"] for o in outputs],
                       region_boxes=[o["region_boxes"] for o in outputs], attributes=attributes)
    with torch.no_grad():
        return processor.batch_decode(model.generate(**inputs, **options))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine the thread pool costs seconds a call."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    built = build_tiny_glied(tmp_path_factory.mktemp("tiny-glied"))
    built["extractor"] = RegionFeatureExtractor.from_dict(built["region_extractor"])
    return built


@pytest.fixture(scope="module")
def captioner(tiny):
    return pipeline("image-to-text", model=str(tiny["model_dir"]))


def texts(results):
    return [[record["generated_text"] for record in per_image] for per_image in results]


# ---------------------------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------------------------
def test_registered_under_image_to_text():
    task, implementation, _ = transformers.pipelines.check_task("image-to-text")
    assert task == "image-to-text" and implementation["impl"] is GLIEDImageToTextPipeline
    expected = ["AutoModelForImageTextToText"] + (["AutoModelForVision2Seq"] if transformers.__version__ < "5" else [])
    assert [auto.__name__ for auto in implementation["pt"]] == expected
    # the other tasks are left as they were
    assert transformers.pipelines.check_task("image-text-to-text")[1]["impl"] is not GLIEDImageToTextPipeline
    with pytest.raises(KeyError):
        transformers.pipelines.check_task("no-such-task")


def test_pipeline_from_a_folder_is_ours_and_loads_the_processor(captioner, tiny):
    assert isinstance(captioner, GLIEDImageToTextPipeline)
    assert isinstance(captioner.processor, GLIEDProcessor)
    assert captioner.region_extractor.to_dict() == tiny["region_extractor"]


def test_other_models_get_the_pipeline_transformers_gives_them():
    language_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16))
    other = GLIEDImageToTextPipeline(model=language_model)
    assert type(other) is _FALLBACK["class"] and not isinstance(other, GLIEDImageToTextPipeline)
    assert other.task == ("image-text-to-text" if transformers.__version__ >= "5" else "image-to-text")


# ---------------------------------------------------------------------------------------------------------------
# captions equal generate()
# ---------------------------------------------------------------------------------------------------------------
def test_one_image_in_every_form_gives_the_reference_caption(captioner, tiny):
    path = tiny["images"][0]
    expected = reference_captions(tiny["model"], tiny["processor"], tiny["extractor"], [path], **OPTIONS)
    image = Image.open(path)
    for form in (image, path, Path(path), np.asarray(image)):
        result = captioner(form, **OPTIONS)
        assert result == [{"generated_text": expected[0]}], type(form)
    assert expected[0] != ""


def test_a_list_with_batch_size_gives_a_list_of_lists(captioner, tiny):
    paths = tiny["images"][:5]
    expected = reference_captions(tiny["model"], tiny["processor"], tiny["extractor"], paths, **OPTIONS)
    assert len(set(expected)) > 1  # the images get different captions, so a mix-up would show
    whole = captioner(paths, batch_size=5, **OPTIONS)
    assert texts(whole) == [[caption] for caption in expected]
    one_by_one = captioner(paths, batch_size=1, **OPTIONS)
    in_pairs = captioner(paths, batch_size=2, **OPTIONS)
    assert texts(one_by_one) == texts(in_pairs) == texts(whole)
    for path, caption in zip(paths[:2], expected):
        alone = reference_captions(tiny["model"], tiny["processor"], tiny["extractor"], [path], **OPTIONS)
        assert alone == [caption]


def test_feature_dicts(captioner, tiny):
    paths = tiny["images"][:3]
    outputs = tiny["extractor"](paths)
    model, processor = tiny["model"], tiny["processor"]
    # the extractor's own output: the same attribute words, hence the same captions, as the raw images
    assert texts(captioner(outputs, batch_size=3, **OPTIONS)) == texts(captioner(paths, batch_size=3, **OPTIONS))
    # features only: no boxes, no attribute words
    plain = [{"region_features": o["region_features"]} for o in outputs]
    expected = processor.batch_decode(model.generate(
        **processor(region_features=[o["region_features"] for o in outputs]), **OPTIONS))
    assert texts(captioner(plain, batch_size=2, **OPTIONS)) == [[caption] for caption in expected]
    # boxes and the caller's own attribute words (torch tensors and lists are fine)
    words = [["red", "circle", "zebra"], [], "blue square"]  # a string is a string of words
    given = [{"region_features": torch.from_numpy(o["region_features"]), "region_boxes": o["region_boxes"].tolist(),
              "attributes": w} for o, w in zip(outputs, words)]
    expected = reference_captions(model, processor, tiny["extractor"], paths, attributes=words, **OPTIONS)
    assert texts(captioner(given, batch_size=3, **OPTIONS)) == [[caption] for caption in expected]
    alone = reference_captions(model, processor, tiny["extractor"], paths[:1], attributes=words[:1], **OPTIONS)
    assert captioner(given[0], **OPTIONS) == [{"generated_text": alone[0]}]


def test_generation_options_pass_through(tiny):
    model, processor, extractor, path = tiny["model"], tiny["processor"], tiny["extractor"], tiny["images"][1]
    captioner = pipeline("image-to-text", model=str(tiny["model_dir"]), num_beams=3)
    # the call adds max_new_tokens to the pipeline's num_beams
    expected = reference_captions(model, processor, extractor, [path], num_beams=3, max_new_tokens=2)
    assert captioner(path, max_new_tokens=2) == [{"generated_text": expected[0]}]
    assert len(expected[0].split()) <= 2
    several = captioner(path, generate_kwargs={"num_return_sequences": 3, "max_new_tokens": 4})
    expected = reference_captions(model, processor, extractor, [path], num_beams=3, num_return_sequences=3,
                                  max_new_tokens=4)
    assert [record["generated_text"] for record in several] == expected and len(several) == 3
    greedy = reference_captions(model, processor, extractor, [path], num_beams=1, max_new_tokens=5)
    assert captioner(path, num_beams=1, max_new_tokens=5)[0]["generated_text"] == greedy[0]


def test_defaults_come_from_the_model_generation_config(captioner, tiny):
    path = tiny["images"][2]
    config = tiny["model"].generation_config
    expected = reference_captions(tiny["model"], tiny["processor"], tiny["extractor"], [path],
                                  num_beams=config.num_beams, max_new_tokens=config.max_new_tokens)
    assert captioner(path) == [{"generated_text": expected[0]}]


def test_return_token_ids(captioner, tiny):
    result = captioner(tiny["images"][0], return_token_ids=True, **OPTIONS)[0]
    assert result["generated_token_ids"][0] == tiny["processor"].tokenizer.bos_token_id
    assert tiny["processor"].decode(result["generated_token_ids"]) == result["generated_text"]


# ---------------------------------------------------------------------------------------------------------------
# attribute words from a detector
# ---------------------------------------------------------------------------------------------------------------
def test_attribute_detector_words_come_first_then_the_label_words(tiny, tmp_path):
    words = ["square", "large", "circle", "star", "left"]
    torch.manual_seed(0)
    detector = GLIEDAttributeDetector(GLIEDAttributeDetectorConfig(attribute_words=words, region_feature_size=128,
                                                                   hidden_size=16)).eval()
    detector.save_pretrained(tmp_path / "detector")
    path = tiny["images"][0]
    outputs = tiny["extractor"](path)
    ranked = [w for w, _ in detector.predict(outputs["region_features"], top_k=3)[0]]
    labels = RegionFeatureExtractor.attribute_candidates(outputs)
    expected_words = ranked + [w for w in labels if w not in ranked]
    for given in (detector, str(tmp_path / "detector")):
        captioner = pipeline("image-to-text", model=str(tiny["model_dir"]), attribute_detector=given,
                             attribute_top_k=3)
        assert captioner.regions(path)["attributes"] == expected_words
        expected = reference_captions(tiny["model"], tiny["processor"], tiny["extractor"], [path],
                                      attributes=[expected_words], **OPTIONS)
        assert captioner(path, **OPTIONS) == [{"generated_text": expected[0]}]
    # the caller's own words win over the detector's
    captioner = pipeline("image-to-text", model=str(tiny["model_dir"]), attribute_detector=detector)
    inputs = captioner.prepare_inputs([{"region_features": outputs["region_features"], "attributes": ["blue"]}])
    assert inputs["attribute_ids"].tolist() == [[tiny["processor"].tokenizer.convert_tokens_to_ids("blue")]]


# ---------------------------------------------------------------------------------------------------------------
# clear errors
# ---------------------------------------------------------------------------------------------------------------
def test_a_model_trained_on_precomputed_features_says_so(tiny, tmp_path):
    processor = GLIEDProcessor(tiny["processor"].tokenizer, region_feature_size=128)  # no region_extractor
    tiny["model"].save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    captioner = pipeline("image-to-text", model=str(tmp_path))
    with pytest.raises(ValueError, match="this model was trained on precomputed features; pass feature dicts or "
                                         "set processor.region_extractor"):
        captioner(tiny["images"][0])
    features = tiny["extractor"](tiny["images"][0])
    assert captioner({"region_features": features["region_features"]}, **OPTIONS)[0]["generated_text"]


def test_a_model_without_its_processor_says_so(tiny, tmp_path):
    tiny["model"].save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="needs the model's GLIEDProcessor"):
        pipeline("image-to-text", model=str(tmp_path))


@pytest.mark.parametrize("inputs, message", [
    ({"features": np.zeros((2, 128))}, r"unknown keys \['features'\]"),
    ({"region_boxes": np.zeros((2, 4))}, "needs 'region_features'"),
    ({"region_features": np.zeros((2, 64))}, "width 64, the model expects 128"),
    ([{"region_features": np.zeros((2, 128)), "region_boxes": np.zeros((2, 4))},
      {"region_features": np.zeros((2, 128))}], "either every input has region_boxes or none"),
])
def test_bad_feature_dicts(captioner, inputs, message):
    with pytest.raises(ValueError, match=message):
        if isinstance(inputs, list):
            captioner.prepare_inputs(inputs)
        else:
            captioner(inputs)


def test_unknown_options_are_named(captioner, tiny):
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['beams'\]"):
        captioner(tiny["images"][0], beams=3)


def test_missing_image_file(captioner, tmp_path):
    with pytest.raises((FileNotFoundError, ValueError), match="missing.png"):
        captioner(str(tmp_path / "missing.png"))


# ---------------------------------------------------------------------------------------------------------------
# re-ranking the beam candidates with a retrieval model
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_reranker(tiny, tmp_path_factory):
    """A random HM-LSTM reading the tiny GLIED's region features, saved to a folder."""
    from modeling_glied import HMLSTMConfig, HMLSTMModel
    from processing.processing_hmlstm import HMLSTMProcessor
    from processing.reranking import BeamReranker

    records = json.loads(Path(tiny["data"]["dataset_json"]).read_text())["images"]
    processor = HMLSTMProcessor.from_captions([s["raw"] for r in records for s in r["sentences"]], count_threshold=0,
                                              region_feature_size=128, max_regions=8, phrase_backend="rules",
                                              region_extractor=tiny["region_extractor"])
    torch.manual_seed(0)
    model = HMLSTMModel(HMLSTMConfig(vocab_size=len(processor.tokenizer), word_embedding_size=8, hidden_size=16,
                                     embedding_size=8, region_feature_size=128, region_box_size=5)).eval()
    folder = tmp_path_factory.mktemp("tiny-hmlstm")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return {"folder": folder, "reranker": BeamReranker(model, processor, num_candidates=3, beam_weight=0.0)}


def test_the_reranker_option_returns_the_reranked_caption(tiny, tiny_reranker):
    paths, reranker = tiny["images"][:6], tiny_reranker["reranker"]
    captioner = pipeline("image-to-text", model=str(tiny["model_dir"]), reranker=str(tiny_reranker["folder"]),
                         rerank_candidates=3, rerank_beam_weight=0.0)
    expected = reranker.generate(tiny["model"], tiny["processor"], captioner.prepare_inputs(paths), num_candidates=3,
                                 beam_weight=0.0, max_new_tokens=6)
    assert any(int(k) != 0 for k in expected.best)  # the reranker overrules beam search somewhere
    assert texts(captioner(paths, batch_size=4, max_new_tokens=6)) == [[caption] for caption in expected.captions]
    # the reranker and its options at the call; reranker=False: plain beam search as before
    plain_captioner = pipeline("image-to-text", model=str(tiny["model_dir"]))
    assert texts(plain_captioner(paths, reranker=reranker, rerank_candidates=3, max_new_tokens=6)) == \
        [[caption] for caption in expected.captions]
    plain = reference_captions(tiny["model"], tiny["processor"], tiny["extractor"], paths[:2], num_beams=3,
                               max_new_tokens=6)
    assert texts(captioner(paths[:2], reranker=False, num_beams=3, max_new_tokens=6)) == [[c] for c in plain]
    assert texts(captioner(paths[:2], rerank_beam_weight=1e6, max_new_tokens=6)) == [[c] for c in plain]
    # every candidate with its scores; the caption is the best score
    record = captioner(paths[0], return_candidates=True, return_token_ids=True, max_new_tokens=6)
    assert len(record) == 1 and [c["generated_text"] for c in record[0]["candidates"]] == expected.texts[0]
    candidates = record[0]["candidates"]
    best = max(candidates, key=lambda c: c["score"])
    assert record[0]["generated_text"] == best["generated_text"] == expected.captions[0]
    assert [c["beam_score"] for c in candidates] == sorted((c["beam_score"] for c in candidates), reverse=True)
    assert all(c["score"] == pytest.approx(c["similarity"]) for c in candidates)  # beam weight 0
    assert tiny["processor"].decode(record[0]["generated_token_ids"]) == record[0]["generated_text"]


def test_reranking_errors(tiny, tiny_reranker, captioner):
    from processing.reranking import BeamReranker

    processor = tiny_reranker["reranker"].processor
    other = type(processor)(processor.tokenizer, region_feature_size=128, phrase_backend="rules",
                            region_extractor={**tiny["region_extractor"], "grid": 2})
    mismatched = BeamReranker(tiny_reranker["reranker"].model, other)
    with pytest.raises(ValueError, match="region extractors differ .*grid"):
        pipeline("image-to-text", model=str(tiny["model_dir"]), reranker=mismatched)
    with pytest.raises(ValueError, match="region extractors differ .*grid"):
        captioner(tiny["images"][0], reranker=mismatched)
    with pytest.raises(ValueError, match=r"\['rerank_candidates'\] need a reranker"):
        captioner(tiny["images"][0], rerank_candidates=3)
    with pytest.raises(ValueError, match="return_candidates needs a reranker"):
        captioner(tiny["images"][0], return_candidates=True)
    with pytest.raises(ValueError, match="rerank_candidates must be a positive integer"):
        captioner(tiny["images"][0], reranker=tiny_reranker["reranker"], rerank_candidates=0)
