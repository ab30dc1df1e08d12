import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import modeling_glied
import transformers
from modeling_glied.modeling_attribute_detector import (
    GLIEDAttributeDetector,
    GLIEDAttributeDetectorConfig,
    GLIEDAttributeDetectorOutput,
)
from processing.attributes import (
    STOP_WORDS,
    AttributeMap,
    attribute_labels,
    build_attribute_vocabulary,
    precision_recall_at_k,
)

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["dog", "cat", "car", "tree", "boat", "horse", "red", "kite", "grass", "sofa"]


def tiny_config(**kwargs):
    values = dict(attribute_words=WORDS[:5], region_feature_size=6, hidden_size=8, hidden_dropout_prob=0.0)
    values.update(kwargs)
    return GLIEDAttributeDetectorConfig(**values)


def detector(seed=0, **kwargs):
    torch.manual_seed(seed)
    return GLIEDAttributeDetector(tiny_config(**kwargs)).eval()


def direct_noisy_or(region_probabilities, mask):
    """P(w_j | I) = 1 - prod_i (1 - p_ij) over the valid regions, as a plain product."""
    keep = mask.bool().unsqueeze(-1)
    return 1.0 - torch.where(keep, 1.0 - region_probabilities, torch.ones_like(region_probabilities)).prod(dim=1)


# ---------------------------------------------------------------------------------------------------------------
# the model: noisy-OR, padding, loss, gradients
# ---------------------------------------------------------------------------------------------------------------
def test_noisy_or_equals_the_product_formula():
    model = detector().double()
    g = torch.Generator().manual_seed(1)
    features = torch.randn(3, 4, 6, generator=g, dtype=torch.float64) * 3
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 1]])
    out = model(features, mask)
    assert isinstance(out, GLIEDAttributeDetectorOutput)
    assert out.probabilities.shape == (3, 5) and out.region_probabilities.shape == (3, 4, 5)
    # p_ij = sigmoid(f(r_i) . w_j + b_j), recomputed from the modules
    expected_regions = torch.sigmoid(model.word_classifier(model.region_encoder(features))) * mask.unsqueeze(-1)
    torch.testing.assert_close(out.region_probabilities, expected_regions)
    torch.testing.assert_close(out.probabilities, direct_noisy_or(expected_regions, mask))
    # a single region: the image probability is the region probability
    torch.testing.assert_close(out.probabilities[2], expected_regions[2, 3])


def test_padded_regions_change_nothing():
    model = detector()
    g = torch.Generator().manual_seed(2)
    features = torch.randn(2, 3, 6, generator=g)
    labels = torch.tensor([[1.0, 0, 1, 0, 0], [0, 1, 1, 0, 1]])
    plain = model(features, labels=labels)
    garbage = torch.randn(2, 3, 6, generator=g) * 100
    # padding interleaved with valid regions, filled with large garbage
    padded = torch.stack([features[:, 0], garbage[:, 0], features[:, 1], garbage[:, 1], garbage[:, 2], features[:, 2]], 1)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1]] * 2)
    out = model(padded, mask, labels=labels)
    torch.testing.assert_close(out.probabilities, plain.probabilities)
    torch.testing.assert_close(out.loss, plain.loss)
    torch.testing.assert_close(out.region_probabilities[:, [0, 2, 5]], plain.region_probabilities)
    assert out.region_probabilities[:, [1, 3, 4]].abs().max() == 0
    # a bool mask means the same
    torch.testing.assert_close(model(padded, mask.bool()).probabilities, plain.probabilities)


def test_an_image_without_valid_regions_has_probability_zero_and_a_finite_loss():
    model = detector()
    features = torch.randn(2, 3, 6)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    out = model(features, mask, labels=torch.ones(2, 5))
    assert out.probabilities[1].abs().max() == 0
    assert out.probabilities[0].min() > 0
    assert torch.isfinite(out.loss)


def test_loss_equals_binary_cross_entropy_computed_naively():
    model = detector(initial_region_probability=0.2).double()
    g = torch.Generator().manual_seed(3)
    features = torch.randn(4, 5, 6, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0, 1, 1, 1, 0]])
    labels = (torch.rand(4, 5, generator=g) > 0.5).double()
    out = model(features, mask, labels=labels)
    probabilities = direct_noisy_or(out.region_probabilities, mask)
    naive = -(labels * probabilities.log() + (1 - labels) * (1 - probabilities).log()).mean()
    torch.testing.assert_close(out.loss, naive)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy(probabilities, labels))
    # soft labels are taken as they are
    soft = torch.full((4, 5), 0.25, dtype=torch.float64)
    torch.testing.assert_close(model(features, mask, labels=soft).loss, F.binary_cross_entropy(probabilities, soft))


@pytest.mark.parametrize("bias", [-30.0, 30.0])
def test_loss_stays_exact_and_trainable_where_the_naive_formula_saturates(bias):
    model = detector()
    with torch.no_grad():
        model.word_classifier.weight.zero_()
        model.word_classifier.bias.fill_(bias)
    features = torch.randn(2, 40, 6)
    labels = torch.tensor([[1.0, 0, 1, 0, 0], [0, 1, 0, 0, 1]])
    out = model(features, labels=labels)
    # the plain float32 product saturates: every P is exactly 0 (bias -30) or exactly 1 (bias +30)
    assert torch.all(direct_noisy_or(out.region_probabilities, torch.ones(2, 40)) == (0.0 if bias < 0 else 1.0))
    # the exact values, in float64: log(1 - P) = 40 log(1 - p) = -40 softplus(bias)
    log_not = -40 * F.softplus(torch.tensor(bias, dtype=torch.float64))
    torch.testing.assert_close(out.probabilities.double(), (-torch.expm1(log_not)).expand(2, 5), rtol=1e-5, atol=0)
    positive, negative = -torch.log(-torch.expm1(log_not)), -log_not
    exact = (labels.double() * positive + (1 - labels.double()) * negative).mean()
    torch.testing.assert_close(out.loss.double(), exact, rtol=1e-4, atol=0)
    out.loss.backward()
    gradient = model.word_classifier.bias.grad
    assert torch.isfinite(gradient).all()
    # the gradient pushes the probabilities of positive words up (bias -30) and of negative words down (bias +30)
    assert (gradient[[0, 1, 2, 4]] < 0).all() if bias < 0 else (gradient > 0).all()


def test_every_parameter_gets_a_gradient():
    model = detector()
    model.train()
    out = model(torch.randn(3, 4, 6), torch.tensor([[1, 1, 0, 0]] * 3), labels=torch.eye(5)[:3])
    out.loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_initial_probabilities_follow_the_config():
    torch.manual_seed(0)
    model = GLIEDAttributeDetector(tiny_config(initial_region_probability=0.05)).eval()
    out = model(torch.zeros(1, 10, 6))
    # f(0) is the LayerNorm of a constant (all zero) hidden vector, so every logit is the bias
    torch.testing.assert_close(out.region_probabilities, torch.full((1, 10, 5), 0.05))
    torch.testing.assert_close(out.probabilities, torch.full((1, 5), 1 - 0.95**10))


def make_mil_problem(num_images, num_words=10, feature_size=16, seed=0, prototypes=None):
    """Images are random sets of 1-3 words; each word shows in 1-2 regions (its prototype plus noise), among 2-4
    background regions of noise; region counts differ, so batches are padded."""
    rng = np.random.default_rng(seed)
    if prototypes is None:
        prototypes = np.random.default_rng(1000).normal(size=(num_words, feature_size)) * 2
    images, labels = [], np.zeros((num_images, num_words), dtype=np.float32)
    for index in range(num_images):
        words = rng.choice(num_words, size=rng.integers(1, 4), replace=False)
        labels[index, words] = 1
        regions = [prototypes[w] + rng.normal(scale=0.5, size=feature_size) for w in words
                   for _ in range(rng.integers(1, 3))]
        regions += list(rng.normal(size=(rng.integers(2, 5), feature_size)))
        images.append(rng.permutation(np.asarray(regions, dtype=np.float32)))
    width = max(len(regions) for regions in images)
    features = np.zeros((num_images, width, feature_size), dtype=np.float32)
    mask = np.zeros((num_images, width), dtype=np.int64)
    for index, regions in enumerate(images):
        features[index, : len(regions)] = regions
        mask[index, : len(regions)] = 1
    return torch.from_numpy(features), torch.from_numpy(mask), torch.from_numpy(labels), prototypes


@pytest.fixture
def one_thread():
    """Tiny matrices train fastest on one thread, and do not stall when other processes load the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_on_a_generated_multiple_instance_problem_reaches_high_precision(one_thread):
    start = time.perf_counter()
    features, mask, labels, prototypes = make_mil_problem(2000, seed=0)
    torch.manual_seed(0)
    config = GLIEDAttributeDetectorConfig(attribute_words=WORDS, region_feature_size=16, hidden_size=32,
                                          hidden_dropout_prob=0.0)
    model = GLIEDAttributeDetector(config)
    test_features, test_mask, test_labels, _ = make_mil_problem(300, seed=1, prototypes=prototypes)
    before = precision_recall_at_k(model.eval()(test_features, test_mask).probabilities, test_labels, k=(1, 3))
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        rows = torch.randint(0, len(features), (32,), generator=g)
        loss = model(features[rows], mask[rows], labels=labels[rows]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = precision_recall_at_k(model.eval()(test_features, test_mask).probabilities, test_labels, k=(1, 3))
    assert before["precision@1"] < 0.5
    assert after["precision@1"] > 0.97, after
    assert after["recall@3"] > 0.97, after
    assert after["mAP"] > 0.97, after
    assert time.perf_counter() - start < 10


# ---------------------------------------------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------------------------------------------
def test_predict_returns_words_sorted_by_probability():
    model = detector(attribute_words=WORDS, initial_region_probability=0.3)
    features = torch.randn(3, 4, 6) * 3
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    probabilities = model(features, mask).probabilities.detach()
    predictions = model.predict(features, mask, top_k=None)
    assert len(predictions) == 3
    for row, predicted in zip(probabilities, predictions):
        assert [word for word, _ in predicted] != WORDS  # a real ranking, not the vocabulary order
        assert sorted(word for word, _ in predicted) == sorted(WORDS)
        values = [value for _, value in predicted]
        assert values == sorted(values, reverse=True)
        for word, value in predicted:
            assert isinstance(word, str) and value == pytest.approx(row[WORDS.index(word)].item(), abs=1e-6)
    top = model.predict(features, mask, top_k=3)
    assert [len(words) for words in top] == [3, 3, 3]
    assert top == [predicted[:3] for predicted in predictions]
    threshold = float(probabilities[0].median())
    kept = model.predict(features, mask, top_k=None, threshold=threshold)
    assert all(value >= threshold for words in kept for _, value in words)
    assert len(kept[0]) == int((probabilities[0] >= threshold).sum())


def test_predict_takes_one_image_and_runs_without_dropout():
    model = detector(hidden_dropout_prob=0.5)
    model.train()
    features = torch.randn(4, 6)
    first = model.predict(features, top_k=None)
    assert model.training  # the mode is restored
    assert len(first) == 1 and first == model.predict(features.numpy(), top_k=None)  # deterministic: no dropout
    with pytest.raises(ValueError, match="top_k"):
        model.predict(features, top_k=0)
    with pytest.raises(ValueError, match="threshold"):
        model.predict(features, threshold=1.5)


def test_ties_keep_vocabulary_order():
    model = detector()
    with torch.no_grad():
        model.word_classifier.weight.zero_()
    assert [word for word, _ in model.predict(torch.randn(2, 6), top_k=None)[0]] == WORDS[:5]


@pytest.mark.parametrize(
    "inputs, message",
    [
        (dict(region_features=torch.randn(2, 6)), "3-D"),
        (dict(region_features=torch.randn(2, 3, 7)), "region_feature_size=6"),
        (dict(region_features=torch.randn(2, 3, 6), region_mask=torch.ones(2, 4)), "region_mask"),
        (dict(region_features=torch.randn(2, 3, 6), labels=torch.ones(2, 4)), "labels"),
    ],
)
def test_bad_inputs_get_clear_errors(inputs, message):
    with pytest.raises(ValueError, match=message):
        detector()(**inputs)
    with pytest.raises(TypeError, match="attribute_ids"):  # a captioner input is no detector input
        detector()(torch.randn(2, 3, 6), attribute_ids=torch.ones(2, 4))


# ---------------------------------------------------------------------------------------------------------------
# config, saving and loading
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change, message",
    [
        (dict(attribute_words=["dog", "dog"]), "twice"),
        (dict(attribute_words=["dog", "hot dog"]), "single words"),
        (dict(attribute_words=["dog", ""]), "single words"),
        (dict(attribute_words=["dog", 3]), "single words"),
        (dict(region_feature_size=0), "region_feature_size"),
        (dict(hidden_size=2.5), "hidden_size"),
        (dict(hidden_dropout_prob=1.0), "hidden_dropout_prob"),
        (dict(initial_region_probability=0.0), "initial_region_probability"),
        (dict(initial_region_probability=1.0), "initial_region_probability"),
        (dict(initializer_range=-1.0), "initializer_range"),
    ],
)
def test_config_validation(change, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**change)


def test_a_detector_needs_a_vocabulary():
    config = GLIEDAttributeDetectorConfig()  # constructible without arguments, as transformers needs
    assert config.attribute_words == [] and config.model_type == "glied_attribute_detector"
    with pytest.raises(ValueError, match="attribute_words is empty"):
        GLIEDAttributeDetector(config)


def test_save_and_load_round_trip(tmp_path):
    model = detector(attribute_words=WORDS, initial_region_probability=0.05)
    with torch.no_grad():  # weights unlike any initialisation, so that loading cannot re-initialise silently
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter))
    model.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors"} <= set(os.listdir(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["attribute_words"] == WORDS
    loaded = GLIEDAttributeDetector.from_pretrained(tmp_path).eval()
    assert loaded.config.attribute_words == WORDS
    assert loaded.config.initial_region_probability == 0.05
    for (name, expected), (_, actual) in zip(model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(actual, expected, msg=name)
    features = torch.randn(2, 3, 6)
    torch.testing.assert_close(loaded(features).probabilities, model(features).probabilities)
    assert loaded.predict(features) == model.predict(features)


def test_auto_classes_once_the_package_registers_the_detector(tmp_path):
    if not hasattr(modeling_glied, "GLIEDAttributeDetector"):
        pytest.skip("modeling_glied/__init__.py does not export and register GLIEDAttributeDetector yet")
    detector().save_pretrained(tmp_path)
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(config) is GLIEDAttributeDetectorConfig
    assert type(transformers.AutoModel.from_pretrained(tmp_path)) is GLIEDAttributeDetector


@pytest.mark.slow
def test_trust_remote_code_loads_where_the_package_is_not_importable(tmp_path):
    # what modeling_glied/__init__.py does for the captioner; idempotent
    GLIEDAttributeDetectorConfig.register_for_auto_class()
    GLIEDAttributeDetector.register_for_auto_class("AutoModel")
    model = detector()
    model.save_pretrained(tmp_path / "ckpt")
    assert {"modeling_attribute_detector.py", "config_checks.py"} <= set(os.listdir(tmp_path / "ckpt"))
    features = torch.randn(2, 3, 6)
    torch.save(features, tmp_path / "features.pt")
    expected = model.predict(features, top_k=3)
    # None in sys.modules makes every import of the packages fail, as where glied is not installed
    script = textwrap.dedent(f"""
        import sys
        sys.modules["modeling_glied"] = sys.modules["processing"] = None
        import torch, transformers
        model = transformers.AutoModel.from_pretrained({str(tmp_path / 'ckpt')!r}, trust_remote_code=True)
        print(type(model).__module__)
        print(model.predict(torch.load({str(tmp_path / 'features.pt')!r}), top_k=3))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr
    module, predicted = result.stdout.strip().splitlines()[-2:]
    assert module.startswith("transformers_modules")
    assert [[word for word, _ in image] for image in eval(predicted)] == [[w for w, _ in image] for image in expected]


# ---------------------------------------------------------------------------------------------------------------
# processing.attributes: vocabulary, labels, metrics, attribute maps
# ---------------------------------------------------------------------------------------------------------------
CAPTIONS = [
    ["A dog, a dog and another DOG!", "The dog is on a sofa."],
    ["A cat on the sofa.", "Two cats and a dog."],
    ["The man's red kite.", "A cat is next to a kite"],
]


def test_vocabulary_counts_images_not_occurrences_and_drops_stop_words():
    vocabulary = build_attribute_vocabulary(CAPTIONS)
    # dog: 2 images (5 occurrences), cat 2, kite 1 (2 occurrences), sofa 2; ties alphabetical
    assert vocabulary == ["cat", "dog", "sofa", "cats", "kite", "man's", "red", "two"]
    assert not set(vocabulary) & STOP_WORDS
    assert {"a", "the", "is", "on", "and", "next", "to", "another"} <= STOP_WORDS


def test_vocabulary_respects_size_and_is_deterministic():
    assert build_attribute_vocabulary(CAPTIONS, size=2) == ["cat", "dog"]
    shuffled = [list(reversed(captions)) for captions in reversed(CAPTIONS)]
    assert build_attribute_vocabulary(shuffled) == build_attribute_vocabulary(CAPTIONS)
    as_mapping = {f"img{index}": captions for index, captions in enumerate(CAPTIONS)}
    assert build_attribute_vocabulary(as_mapping) == build_attribute_vocabulary(CAPTIONS)


def test_vocabulary_stop_word_options():
    everything = build_attribute_vocabulary(CAPTIONS, stopwords=None)
    assert everything[:2] == ["a", "the"] and "is" in everything  # "a" and "the" are in all three images
    custom = build_attribute_vocabulary(CAPTIONS, stopwords=["A", "Dog"])  # normalised like captions
    assert "a" not in custom and "dog" not in custom and "the" in custom
    with pytest.raises(ValueError, match="size"):
        build_attribute_vocabulary(CAPTIONS, size=0)
    with pytest.raises(ValueError, match="stopwords"):
        build_attribute_vocabulary(CAPTIONS, stopwords="the")
    with pytest.raises(ValueError, match="captions of image 1"):
        build_attribute_vocabulary([["a dog"], [3]])


def test_attribute_labels():
    labels = attribute_labels(CAPTIONS, ["dog", "kite", "zebra", "cat"])
    assert labels.dtype == np.float32
    np.testing.assert_array_equal(labels, [[1, 0, 0, 0], [1, 0, 0, 1], [0, 1, 0, 1]])
    assert attribute_labels(["A dog."], ["dog"], dtype=np.uint8).dtype == np.uint8  # a lone string is one caption
    with pytest.raises(ValueError, match="normalised"):
        attribute_labels(CAPTIONS, ["Dog"])
    with pytest.raises(ValueError, match="twice"):
        attribute_labels(CAPTIONS, ["dog", "cat", "dog"])


def test_precision_recall_and_map_on_a_hand_computed_example():
    probabilities = [[0.9, 0.8, 0.1, 0.3], [0.2, 0.7, 0.6, 0.1]]
    labels = [[1, 0, 0, 1], [0, 1, 1, 1]]
    metrics = precision_recall_at_k(probabilities, labels, k=(1, 2))
    # top 1: dog(1) | w1(1); top 2: + w1(0) | + w2(1); 5 positive words in all
    assert metrics["precision@1"] == pytest.approx(1.0)
    assert metrics["recall@1"] == pytest.approx(2 / 5)
    assert metrics["precision@2"] == pytest.approx(3 / 4)
    assert metrics["recall@2"] == pytest.approx(3 / 5)
    # per word AP over images: 1, 1/2 (its positive image ranked second), 1, 1
    assert metrics["mAP"] == pytest.approx(0.875)
    torch_metrics = precision_recall_at_k(torch.tensor(probabilities), torch.tensor(labels), k=2)
    assert set(torch_metrics) == {"precision@2", "recall@2", "mAP"}
    assert torch_metrics["precision@2"] == pytest.approx(3 / 4)


def test_precision_at_k_ties_and_errors():
    # equal scores: vocabulary order decides, so the positive third word is not in the top 1
    assert precision_recall_at_k([[0.5, 0.5, 0.5]], [[0, 0, 1]], k=1)["precision@1"] == 0.0
    with pytest.raises(ValueError, match="number of words"):
        precision_recall_at_k([[0.5, 0.5]], [[0, 1]], k=5)
    with pytest.raises(ValueError, match="shape"):
        precision_recall_at_k([[0.5, 0.5]], [[0, 1, 1]], k=1)
    with pytest.raises(ValueError, match="multi-hot"):
        precision_recall_at_k([[0.5, 0.5]], [[0, 2]], k=1)


def test_attribute_map_round_trip(tmp_path):
    predictions = [[("dog", 0.9), ("sofa", 0.4)], [("kite", 0.8)], []]
    amap = AttributeMap.from_predictions([391895, "abc", 7], predictions)
    assert amap[391895] == amap["391895"] == ["dog", "sofa"]
    assert 391895 in amap and "missing" not in amap and 3.5 not in amap
    path = amap.save(tmp_path / "sub" / "attributes.json")
    assert json.loads(path.read_text()) == {"391895": ["dog", "sofa"], "abc": ["kite"], "7": []}
    loaded = AttributeMap.load(path)
    assert dict(loaded) == dict(amap) and len(loaded) == 3
    assert loaded.words(["abc", 391895]) == [["kite"], ["dog", "sofa"]]
    assert loaded.words(["abc", "nope"], missing="empty") == [["kite"], []]
    with pytest.raises(KeyError, match="nope"):
        loaded.words(["nope"])


def test_attribute_map_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        AttributeMap.load(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        AttributeMap.load(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text('["dog"]')
    with pytest.raises(ValueError, match="JSON object"):
        AttributeMap.load(tmp_path / "list.json")
    (tmp_path / "string.json").write_text('{"1": "dog cat"}')
    with pytest.raises(ValueError, match="list of strings"):
        AttributeMap.load(tmp_path / "string.json")
    with pytest.raises(ValueError, match="twice"):
        AttributeMap.from_predictions([1, "1"], [["dog"], ["cat"]])


# ---------------------------------------------------------------------------------------------------------------
# examples/train_attributes.py
# ---------------------------------------------------------------------------------------------------------------
def load_cli():
    spec = importlib.util.spec_from_file_location("train_attributes", ROOT / "examples" / "train_attributes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NOUNS = ["dog", "cat", "car", "tree", "boat", "horse"]


def write_generated_data(root, num_images=(160, 20, 20), feature_size=16):
    """An npz folder (one <image_id>.npz with 'feat' per image) and a Karpathy JSON whose captions name the words
    whose prototypes the regions copy."""
    features, mask, labels, _ = make_mil_problem(sum(num_images), num_words=len(NOUNS), feature_size=feature_size)
    feature_dir = root / "features"
    feature_dir.mkdir()
    images, splits = [], ["train"] * num_images[0] + ["val"] * num_images[1] + ["test"] * num_images[2]
    for index, split in enumerate(splits):
        np.savez(feature_dir / f"{index}.npz", feat=features[index][mask[index].bool()].numpy())
        words = [NOUNS[j] for j in np.flatnonzero(labels[index].numpy())]
        raws = [f"A {' and a '.join(words)} on the grass.", f"There is a {' with a '.join(reversed(words))}."]
        images.append({"filepath": split, "filename": f"{index}.jpg", "cocoid": index,
                       "split": "restval" if index == 0 else split, "sentences": [{"raw": raw} for raw in raws]})
    captions = root / "dataset.json"
    captions.write_text(json.dumps({"images": images}))
    return feature_dir, captions


def test_train_attributes_cli_end_to_end(tmp_path, one_thread):
    cli = load_cli()
    feature_dir, captions = write_generated_data(tmp_path)
    output = tmp_path / "run"
    result = cli.main(["--features", str(feature_dir), "--captions", str(captions), "--output", str(output),
                       "--epochs", "5", "--batch-size", "8", "--lr", "1e-2", "--hidden-size", "32",
                       "--top-k", "3", "--num-workers", "0", "--device", "cpu"])
    detector_config = GLIEDAttributeDetectorConfig.from_pretrained(output)
    assert sorted(detector_config.attribute_words) == sorted(NOUNS + ["grass"])
    assert detector_config.attribute_words[0] == "grass"  # in every training image
    amap = AttributeMap.load(output / "attributes.json")
    assert sorted(amap, key=int) == [str(index) for index in range(200)]  # every split, restval included
    assert all(len(words) == 3 and set(words) <= set(detector_config.attribute_words) for words in amap.values())
    metrics = json.loads((output / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 5 and {"precision@5", "recall@5", "mAP"} <= set(metrics["epochs"][0]["val"])
    assert metrics["test"] == result["metrics"]["test"]
    assert metrics["test"]["mAP"] > 0.9, metrics
    loaded = GLIEDAttributeDetector.from_pretrained(output)
    assert loaded.config.region_feature_size == 16


def test_train_attributes_cli_names_images_without_features(tmp_path):
    cli = load_cli()
    feature_dir, captions = write_generated_data(tmp_path, num_images=(6, 2, 2))
    os.remove(feature_dir / "7.npz")
    with pytest.raises(ValueError, match="'7'"):
        cli.load_data(feature_dir, captions)


def test_train_attributes_cli_reads_a_converted_feature_store_like_the_npz_folder(tmp_path):
    from processing.feature_stores import convert_feature_store

    cli = load_cli()
    feature_dir, captions = write_generated_data(tmp_path, num_images=(6, 2, 2))
    store = convert_feature_store(feature_dir, tmp_path / "store", progress=False)
    from_npz, npz_features = cli.load_data(feature_dir, captions)
    from_store, store_features = cli.load_data(store, captions)
    assert from_store == from_npz and [len(from_npz[split]) for split in cli.SPLITS] == [6, 2, 2]
    for record in from_npz["train"] + from_npz["test"]:
        np.testing.assert_array_equal(store_features[record["image_id"]], npz_features[record["image_id"]])
