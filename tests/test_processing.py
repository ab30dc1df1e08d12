import json

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, BatchFeature

from modeling_glied import GLIEDConfig
from processing.processing_glied import GLIEDProcessor, register_auto_classes
from processing.tokenization_glied import GLIEDTokenizer

F = 8
CAPTIONS = ["a dog runs on the grass", "a cat sits on the red sofa", "a man with a hat"] * 2


@pytest.fixture
def processor():
    return GLIEDProcessor.from_captions(CAPTIONS, count_threshold=0, region_feature_size=F, max_regions=4,
                                        max_attributes=3, max_caption_length=5)


def word_id(processor, word):
    return processor.tokenizer.get_vocab()[word]


def features(*counts, seed=0):
    generator = np.random.default_rng(seed)
    return [generator.standard_normal((count, F)).astype(np.float32) for count in counts]


def test_regions_are_padded_with_a_mask(processor):
    feats = features(2, 3)
    out = processor(feats)
    assert isinstance(out, BatchFeature)
    assert out["region_features"].shape == (2, 3, F) and out["region_features"].dtype == torch.float32
    assert out["region_mask"].dtype == torch.long
    assert out["region_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert torch.equal(out["region_features"][0, :2], torch.from_numpy(feats[0]))
    assert torch.count_nonzero(out["region_features"][0, 2]) == 0
    assert set(out) == {"region_features", "region_mask"}


def test_regions_beyond_max_regions_are_cut_keeping_the_first(processor):
    feats = features(6, 2)
    out = processor(feats, return_tensors="np")
    assert out["region_features"].shape == (2, 4, F)
    assert out["region_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    np.testing.assert_array_equal(out["region_features"][0], feats[0][:4])


@pytest.mark.parametrize("kind", ["numpy", "torch", "list", "batched numpy", "batched torch"])
def test_feature_input_types(processor, kind):
    feats = features(3, 3)
    inputs = {
        "numpy": feats,
        "torch": [torch.from_numpy(item).double() for item in feats],
        "list": [item.tolist() for item in feats],
        "batched numpy": np.stack(feats),
        "batched torch": torch.from_numpy(np.stack(feats)),
    }[kind]
    out = processor(inputs, return_tensors="np")
    assert out["region_features"].dtype == np.float32 and out["region_mask"].dtype == np.int64
    np.testing.assert_allclose(out["region_features"], np.stack(feats), rtol=1e-6)
    assert out["region_mask"].all()


def test_return_tensors(processor):
    out = processor(features(2), captions=["a dog"], return_tensors="np")
    assert all(isinstance(value, np.ndarray) for value in out.values())
    out = processor(features(2), captions=["a dog"], return_tensors="pt")
    assert all(isinstance(value, torch.Tensor) for value in out.values())
    with pytest.raises(ValueError, match="return_tensors must be 'pt' or 'np'"):
        processor(features(2), return_tensors="tf")


def test_boxes_in_pixels_are_normalised(processor):
    boxes = [np.array([[0, 0, 320, 240], [160, 120, 640, 480]]), [[10, 20, 30, 40]]]
    out = processor(features(2, 1), region_boxes=boxes, image_sizes=[(640, 480), (100, 200)], return_tensors="np")
    assert out["region_boxes"].dtype == np.float32 and out["region_boxes"].shape == (2, 2, 4)
    np.testing.assert_allclose(out["region_boxes"][0], [[0, 0, 0.5, 0.5], [0.25, 0.25, 1, 1]])
    np.testing.assert_allclose(out["region_boxes"][1], [[0.1, 0.1, 0.3, 0.2], [0, 0, 0, 0]])


def test_normalised_boxes_pass_through_and_are_cut_with_the_regions(processor):
    boxes = np.tile(np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32), (6, 1))
    boxes[5] = [0.0, 0.0, 1.0, 1.0]
    out = processor(features(6), region_boxes=[torch.from_numpy(boxes)], return_tensors="np")
    assert out["region_boxes"].shape == (1, 4, 4)
    np.testing.assert_allclose(out["region_boxes"][0], boxes[:4])


def test_pixel_border_overshoot_is_clipped(processor):
    out = processor(features(1), region_boxes=[[[0, 0, 640.5, 480]]], image_sizes=[(640, 480)], return_tensors="np")
    np.testing.assert_allclose(out["region_boxes"][0, 0], [0, 0, 1, 1])


def test_attributes(processor):
    out = processor(features(2, 2), attributes=[["Dog", "zebra", "dog", "grass", "hat", "sofa"], []])
    assert out["attribute_ids"].dtype == torch.long
    ids = [word_id(processor, word) for word in ("dog", "grass", "hat")]  # zebra dropped, duplicate dropped, max 3
    assert out["attribute_ids"].tolist() == [ids, [0, 0, 0]]
    assert out["attribute_mask"].tolist() == [[1, 1, 1], [0, 0, 0]]


def test_attributes_as_strings_and_unknown_counts(processor):
    out = processor(attributes=["dog zebra", ["cat", "zebra", "unicorn", "hat"]], return_unknown_words=True)
    assert out["attribute_ids"].tolist() == [[word_id(processor, "dog"), 0],
                                             [word_id(processor, "cat"), word_id(processor, "hat")]]
    assert out["attribute_mask"].tolist() == [[1, 0], [1, 1]]
    assert out["unknown_words"]["attributes"] == {"zebra": 2, "unicorn": 1}


def test_no_attributes_at_all_gives_empty_tensors(processor):
    out = processor(features(2, 3), attributes=[[], ["zebra"]])
    assert out["attribute_ids"].shape == (2, 0) and out["attribute_mask"].shape == (2, 0)
    assert out["attribute_ids"].dtype == torch.long


def test_captions_give_shifted_decoder_inputs_and_labels(processor):
    out = processor(features(1, 1), captions=["A dog runs!", "a man with a hat on the grass"])
    a, dog, runs = (word_id(processor, word) for word in ("a", "dog", "runs"))
    assert out["decoder_input_ids"].tolist()[0] == [1, a, dog, runs, 0, 0]
    assert out["labels"].tolist()[0] == [a, dog, runs, 2, -100, -100]
    # truncated to max_caption_length=5 words, <eos> still closes the labels
    words = [word_id(processor, word) for word in "a man with a hat".split()]
    assert out["decoder_input_ids"].tolist()[1] == [1] + words
    assert out["labels"].tolist()[1] == words + [2]
    assert out["decoder_input_ids"].dtype == torch.long and out["labels"].dtype == torch.long


def test_unknown_caption_words_become_unk_and_are_counted(processor):
    out = processor(captions=["a zebra and a zebra", "a dog"], return_unknown_words=True)
    assert out["labels"].tolist()[0][:5] == [word_id(processor, "a"), 3, 3, word_id(processor, "a"), 3]
    assert out["unknown_words"] == {"captions": {"zebra": 2, "and": 1}, "attributes": {}}
    assert "unknown_words" not in processor(captions=["a zebra"])


def test_several_captions_per_image_repeat_the_image(processor):
    feats = features(2, 3)
    out = processor(feats, attributes=[["dog"], ["cat"]], captions=[["a dog", "a dog runs"], ["a cat"]],
                    return_image_index=True, return_tensors="np")
    assert out["image_index"].tolist() == [0, 0, 1]
    assert out["region_features"].shape == (3, 3, F) and out["decoder_input_ids"].shape[0] == 3
    np.testing.assert_array_equal(out["region_features"][1, :2], feats[0])
    np.testing.assert_array_equal(out["region_features"][2], feats[1])
    assert out["region_mask"].tolist() == [[1, 1, 0], [1, 1, 0], [1, 1, 1]]
    assert out["attribute_ids"][:, 0].tolist() == [word_id(processor, w) for w in ("dog", "dog", "cat")]
    assert processor.batch_decode(out["labels"]) == ["a dog", "a dog runs", "a cat"]
    assert "image_index" not in processor(feats, captions=[["a dog"], ["a cat"]])


def test_decode_stops_at_eos_and_skips_label_padding(processor):
    a, dog = word_id(processor, "a"), word_id(processor, "dog")
    generated = torch.tensor([[1, a, dog, 2, dog, 0], [1, dog, 2, 0, 0, 0]])
    assert processor.batch_decode(generated) == ["a dog", "dog"]
    assert processor.batch_decode(generated, skip_special_tokens=False) == ["<bos> a dog <eos>", "<bos> dog <eos>"]
    assert processor.decode(np.array([a, dog, 2, -100])) == "a dog"
    assert processor.decode([a, dog]) == "a dog"  # no <eos>: the whole sequence
    labels = processor(captions=["a dog runs on the grass"])["labels"]
    assert processor.batch_decode(labels) == ["a dog runs on the"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(region_features=[np.zeros((2, F)), np.zeros((2, F)), np.zeros((2, F)), np.zeros((2, 6))]),
         "region_features of image 3 have width 6, the model expects 8"),
        (dict(region_features=[np.zeros((2, F)), np.full((2, F), np.nan)]),
         "region_features of image 1 contain NaN"),
        (dict(region_features=[np.zeros((2, F)), np.array([[np.inf] * F])]),
         "region_features of image 1 contain NaN or infinite"),
        (dict(region_features=[np.zeros((0, F))]), "region_features of image 0 hold no region"),
        (dict(region_features=np.zeros((2, F))), "must have 3 dimensions"),
        (dict(region_features=[np.zeros(F)]), "region_features of image 0 must be a 2-D"),
        (dict(region_features=[[[0.0] * F, [0.0] * 3]]), "region_features of image 0 is not a rectangular array"),
        (dict(region_features=[np.zeros((1, F))], region_boxes=[[[0.5, 0.1, 0.2, 0.3]]]),
         r"region_boxes of image 0, region 0: .* has x2 < x1"),
        (dict(region_features=[np.zeros((1, F))], region_boxes=[[[0.1, 0.5, 0.2, 0.3]]]), "y2 < y1"),
        (dict(region_features=[np.zeros((1, F))], region_boxes=[[[0, 0, 50, 50]]]),
         r"lies outside \[0, 1\]; boxes in pixels need image_sizes"),
        (dict(region_features=[np.zeros((2, F))], region_boxes=[[[0, 0, 50, 50], [0, 0, 50, 90]]],
              image_sizes=[(100, 60)]),
         r"region_boxes of image 0, region 1: .* lies outside the image \(width 100, height 60\)"),
        (dict(region_features=[np.zeros((1, F))], region_boxes=[[[-5, 0, 50, 50]]], image_sizes=[(100, 60)]),
         "lies outside the image"),
        (dict(region_features=[np.zeros((2, F))], region_boxes=[[[0, 0, 1, 1]]]),
         "image 0 has 2 region features but 1 region_boxes"),
        (dict(region_features=[np.zeros((1, F))], region_boxes=[[[0, 0, 1]]]), r"must have shape \(regions, 4\)"),
        (dict(region_features=[np.zeros((1, F))], region_boxes=[[[0, 0, 1, 1]]], image_sizes=[(0, 10)]),
         "image_sizes of image 0 must be a positive"),
        (dict(region_boxes=[[[0, 0, 1, 1]]]), "region_boxes were given without region_features"),
        (dict(region_features=[np.zeros((1, F))] * 2, captions=["a dog"] * 3),
         "disagree on the number of images: region_features has 2, captions has 3"),
        (dict(region_features=[np.zeros((1, F))] * 2, attributes=[["dog"]]),
         "region_features has 2, attributes has 1"),
        (dict(captions=["a dog", " ?! "]), "caption 1 is empty"),
        (dict(captions=["a dog", ["a cat"]]), "not a mixture"),
        (dict(captions=[["a dog"], []]), "image 1 has an empty list of captions"),
        (dict(captions="a dog"), "captions must be a list"),
        (dict(attributes=[["dog", 3]]), "attributes of image 0 must be words"),
        (dict(), "nothing to process"),
        (dict(captions=[]), "no image"),
    ],
)
def test_bad_input_raises_a_named_value_error(processor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        processor(**kwargs)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(region_feature_size=0), "region_feature_size must be an integer >= 1"),
        (dict(max_regions=2.5), "max_regions must be an integer"),
        (dict(max_caption_length=0), "max_caption_length"),
        (dict(region_extractor=["not", "a", "dict"]), "region_extractor must be a dict"),
        (dict(region_extractor={"weights": object()}), "JSON-serialisable"),
    ],
)
def test_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        GLIEDProcessor(GLIEDTokenizer(), **settings)


def test_check_model_config(processor):
    processor.check_model_config(GLIEDConfig(vocab_size=len(processor.tokenizer), region_feature_size=F))
    with pytest.raises(ValueError, match="width 8, the model expects 2048"):
        processor.check_model_config(GLIEDConfig(vocab_size=len(processor.tokenizer)))
    with pytest.raises(ValueError, match="the model only 5"):
        processor.check_model_config(GLIEDConfig(vocab_size=5, region_feature_size=F))


def test_save_load_round_trip(tmp_path, processor):
    extractor = {"detector": "bottom-up faster r-cnn", "min_regions": 10, "max_regions": 100, "scales": [600]}
    processor = GLIEDProcessor(processor.tokenizer, region_feature_size=F, max_regions=7, max_attributes=9,
                               max_caption_length=11, region_extractor=extractor)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["region_extractor"] == extractor and saved["max_regions"] == 7
    loaded = GLIEDProcessor.from_pretrained(tmp_path)
    assert type(loaded.tokenizer) is GLIEDTokenizer
    assert (loaded.region_feature_size, loaded.max_regions, loaded.max_attributes, loaded.max_caption_length) == (
        F, 7, 9, 11)
    assert loaded.region_extractor == extractor
    assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    inputs = dict(region_features=features(3, 9), attributes=[["dog"], ["cat", "hat"]],
                  captions=["a dog on the grass", "a red hat"], return_tensors="np")
    expected, got = processor(**inputs), loaded(**inputs)
    assert set(expected) == set(got)
    for key in expected:
        np.testing.assert_array_equal(expected[key], got[key])


def test_auto_processor_round_trip(tmp_path, processor):
    register_auto_classes()
    register_auto_classes()  # twice is harmless
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is GLIEDProcessor and type(loaded.tokenizer) is GLIEDTokenizer
    assert loaded.max_caption_length == 5 and loaded.region_feature_size == F
    # a model folder: config.json next to the processor files
    GLIEDConfig(vocab_size=len(processor.tokenizer), region_feature_size=F).save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is GLIEDProcessor
    assert loaded.batch_decode([[1, word_id(processor, "dog"), 2]]) == ["dog"]


def test_from_pretrained_refuses_a_folder_without_a_processor(tmp_path):
    from modeling_glied import GLIEDConfig

    GLIEDConfig(vocab_size=50).save_pretrained(tmp_path)  # a model folder, no processor in it
    with pytest.raises(FileNotFoundError, match="holds no GLIEDProcessor"):
        GLIEDProcessor.from_pretrained(tmp_path)


def test_from_pretrained_refuses_the_other_processor_class(tmp_path):
    from processing import HMLSTMProcessor

    glied = GLIEDProcessor.from_captions(["a dog on a mat", "a cat"], count_threshold=0, region_feature_size=F)
    glied.save_pretrained(tmp_path / "glied")
    hmlstm = HMLSTMProcessor.from_captions(["a dog on a mat", "a cat"], count_threshold=0, region_feature_size=F,
                                           phrase_backend="rules")
    hmlstm.save_pretrained(tmp_path / "hmlstm")
    with pytest.raises(ValueError, match="holds a GLIEDProcessor, not a HMLSTMProcessor"):
        HMLSTMProcessor.from_pretrained(tmp_path / "glied")
    with pytest.raises(ValueError, match="holds a HMLSTMProcessor, not a GLIEDProcessor"):
        GLIEDProcessor.from_pretrained(tmp_path / "hmlstm")
    assert type(HMLSTMProcessor.from_pretrained(tmp_path / "hmlstm")) is HMLSTMProcessor


def test_build_region_extractor_from_the_description_and_check_its_width():
    from processing import RegionFeatureExtractor

    description = RegionFeatureExtractor(detector="components", backbone="pixels", max_regions=8).to_dict()
    tokenizer = GLIEDProcessor.from_captions(["a dog"], count_threshold=0).tokenizer
    assert GLIEDProcessor(tokenizer, region_feature_size=description["feature_size"]).build_region_extractor() is None
    processor = GLIEDProcessor(tokenizer, region_feature_size=description["feature_size"], region_extractor=description)
    extractor = processor.build_region_extractor()
    assert extractor.to_dict() == description
    wrong = GLIEDProcessor(tokenizer, region_feature_size=description["feature_size"] + 1,
                           region_extractor=description)
    with pytest.raises(ValueError, match=f"width {description['feature_size']}, the model expects "
                                         f"{description['feature_size'] + 1}"):
        wrong.build_region_extractor()
