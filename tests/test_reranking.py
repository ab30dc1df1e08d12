"""Re-ranking GLIED's beam candidates with the HM-LSTM: the choice is the argmax of cos + w * beam score."""

import numpy as np
import pytest
import torch

from modeling_glied import GLIEDConfig, GLIEDForCaptioning, HMLSTMConfig, HMLSTMModel
from processing.captioning_data import CaptioningCollator, CaptioningDataset, model_inputs
from processing.evaluation import evaluate_model, generate_captions
from processing.feature_stores import FeatureStore, write_synthetic_feature_store
from processing.processing_glied import GLIEDProcessor
from processing.processing_hmlstm import HMLSTMProcessor
from processing.reranking import BeamReranker, RerankedBeams, check_same_regions
from test_pipeline import one_thread  # noqa: F401  (autouse: one intra-op thread for the tiny models)

F, K = 16, 4
CAPTIONS = ["a red circle above a blue square", "two small green triangles in a row", "a large star and a cross",
            "an orange cross left of a purple circle", "a blue square below a small red star"]
EXTRACTOR = {"detector": "components", "backbone": "pixels", "max_regions": 8}  # RegionFeatureExtractor defaults
FULL_EXTRACTOR = {"format_version": 1, "detector": "components", "backbone": "pixels", "max_regions": 8,
                  "score_threshold": 0.3, "nms_iou": None, "image_size": 448, "grid": 0, "add_whole_image": True,
                  "pool_size": 7, "sampling_ratio": 2, "feature_size": F}


def glied(seed=0):
    processor = GLIEDProcessor.from_captions(CAPTIONS, count_threshold=0, region_feature_size=F, max_regions=6,
                                             region_extractor=FULL_EXTRACTOR)
    torch.manual_seed(seed)
    config = GLIEDConfig(vocab_size=len(processor.tokenizer), hidden_size=32, num_attention_heads=4,
                         intermediate_size=64, region_feature_size=F, initializer_range=0.5)
    return GLIEDForCaptioning(config).eval(), processor


def hmlstm(seed=0, region_feature_size=F, region_extractor=EXTRACTOR, **settings):
    # its own vocabulary (a word of GLIED's missing here becomes <unk>), fewer regions than the captioner reads
    processor = HMLSTMProcessor.from_captions(CAPTIONS[:3], count_threshold=0, region_feature_size=region_feature_size,
                                              max_regions=4, phrase_backend="rules",
                                              region_extractor=region_extractor)
    torch.manual_seed(seed)
    config = HMLSTMConfig(vocab_size=len(processor.tokenizer), word_embedding_size=8, hidden_size=16,
                          embedding_size=8, region_feature_size=region_feature_size, region_box_size=5)
    return HMLSTMModel(config).eval(), processor


@pytest.fixture(scope="module")
def models():
    captioner, processor = glied()
    retrieval, retrieval_processor = hmlstm()
    return {"captioner": captioner, "processor": processor,
            "reranker": BeamReranker(retrieval, retrieval_processor, num_candidates=K)}


def image_inputs(processor, count=4, seed=0):
    generator = np.random.default_rng(seed)
    regions = [int(n) for n in generator.integers(2, 8, size=count)]
    features = [generator.standard_normal((n, F)).astype(np.float32) for n in regions]
    boxes = [np.sort(generator.random((n, 4)), axis=1).astype(np.float32) for n in regions]
    attributes = [["red"], [], ["star"], []] * count
    return dict(processor(region_features=features, region_boxes=boxes, attributes=attributes[:count]))


def by_hand(reranker, inputs, texts, beam_scores, weight):
    """cos(image, caption) + weight * beam score, one image and one caption at a time; argmax per image."""
    model, processor = reranker.model, reranker.processor
    chosen, similarities = [], []
    for row, candidates in enumerate(texts):
        valid = inputs["region_mask"][row].bool()
        image = processor(region_features=[inputs["region_features"][row][valid].numpy()],
                          region_boxes=[inputs["region_boxes"][row][valid].numpy()])
        with torch.no_grad():
            image_embed, _ = model.embed_images(image["region_features"], image["region_mask"], image["region_boxes"])
            row_similarities = []
            for text in candidates:
                sentence = processor(sentences=[text])
                embed, _ = model.embed_sentences(sentence["input_ids"], sentence["attention_mask"],
                                                 sentence["phrase_spans"], sentence["phrase_mask"])
                row_similarities.append(float(image_embed[0] @ embed[0]))
        scores = [s + weight * float(b) for s, b in zip(row_similarities, beam_scores[row])]
        chosen.append(max(range(len(scores)), key=lambda k: (scores[k], -k)))
        similarities.append(row_similarities)
    return chosen, similarities


def beam_candidates(captioner, processor, inputs, count=K):
    with torch.no_grad():
        output = captioner.generate(**inputs, num_beams=count, num_return_sequences=count, output_scores=True,
                                    return_dict_in_generate=True, max_new_tokens=8)
    texts = processor.batch_decode(output.sequences, skip_special_tokens=True)
    rows = len(texts) // count
    return [texts[r * count:(r + 1) * count] for r in range(rows)], output.sequences_scores.reshape(rows, count)


@pytest.mark.parametrize("weight", [0.0, 0.7])
def test_the_choice_is_the_argmax_of_the_formula_computed_by_hand(models, weight):
    captioner, processor, reranker = models["captioner"], models["processor"], models["reranker"]
    inputs = image_inputs(processor)
    texts, beam_scores = beam_candidates(captioner, processor, inputs)
    assert all(len(set(group)) == K for group in texts)  # distinct candidates: a wrong pick would show
    reranked = reranker.generate(captioner, processor, inputs, beam_weight=weight, max_new_tokens=8)
    assert isinstance(reranked, RerankedBeams) and reranked.texts == texts
    torch.testing.assert_close(reranked.beam_scores, beam_scores)
    chosen, similarities = by_hand(reranker, inputs, texts, beam_scores, weight)
    torch.testing.assert_close(reranked.similarities, torch.tensor(similarities), atol=1e-5, rtol=1e-5)
    assert reranked.best.tolist() == chosen
    assert reranked.captions == [group[k] for group, k in zip(texts, chosen)]
    assert reranked.best_sequences.shape == (4, reranked.sequences.shape[-1])
    if weight == 0.0:
        assert any(k != 0 for k in chosen)  # the similarity alone overrules beam search somewhere


def test_rerank_given_candidates_and_empty_captions(models):
    reranker, processor = models["reranker"], models["processor"]
    inputs = image_inputs(processor, count=2, seed=3)
    texts = [["a red circle", "two green triangles", ""], ["", "", ""]]
    beam_scores = torch.tensor([[-0.1, -0.2, -0.0], [-0.3, -0.1, -0.2]])
    reranked = reranker.rerank(texts, beam_scores, inputs["region_features"], inputs["region_mask"],
                               inputs["region_boxes"], beam_weight=0.5)
    chosen, similarities = by_hand(reranker, inputs, [texts[0][:2]], beam_scores[:1, :2], 0.5)
    assert reranked.best.tolist() == [chosen[0], 0]  # an empty caption is never chosen; all empty: the first beam
    assert torch.isnan(reranked.similarities[0, 2]) and torch.isinf(reranked.scores[1]).all()
    torch.testing.assert_close(reranked.similarities[0, :2], torch.tensor(similarities[0]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="K candidates for each of the 2 images"):
        reranker.rerank(texts[:1], beam_scores[:1], inputs["region_features"], inputs["region_mask"])


def test_a_huge_beam_weight_gives_plain_beam_search(models):
    captioner, processor, reranker = models["captioner"], models["processor"], models["reranker"]
    inputs = image_inputs(processor, seed=1)
    with torch.no_grad():
        plain = processor.batch_decode(captioner.generate(**inputs, num_beams=K, max_new_tokens=8))
    reranked = reranker.generate(captioner, processor, inputs, beam_weight=1e6, max_new_tokens=8)
    assert reranked.captions == plain and reranked.best.tolist() == [0, 0, 0, 0]
    # K < num_beams: the K best of num_beams beams; the top one is still plain beam search's
    few = reranker.generate(captioner, processor, inputs, num_candidates=2, num_beams=K, beam_weight=1e6,
                            max_new_tokens=8)
    assert few.captions == plain and few.sequences.shape[:2] == (4, 2)


def test_mismatching_region_features_are_refused(models):
    captioner, processor = models["captioner"], models["processor"]
    narrow = BeamReranker(*hmlstm(region_feature_size=8))
    with pytest.raises(ValueError, match="width 8, the captioner's are 16 wide"):
        narrow.generate(captioner, processor, image_inputs(processor))
    other = BeamReranker(*hmlstm(region_extractor={**EXTRACTOR, "max_regions": 36}))
    with pytest.raises(ValueError, match="region extractors differ .*max_regions: captioner 8, reranker 36"):
        other.check_captioner(processor)
    unknown = BeamReranker(*hmlstm(region_extractor=None))
    with pytest.raises(ValueError, match="the reranker's processor has no region_extractor description"):
        unknown.check_captioner(processor)
    # a description with the defaults left out is the same extractor; neither side described is fine too
    check_same_regions(processor, models["reranker"].processor)
    check_same_regions(GLIEDProcessor(processor.tokenizer, region_feature_size=F), unknown.processor)
    with pytest.raises(ValueError, match="needs an HMLSTMModel"):
        BeamReranker(captioner, processor)
    with pytest.raises(ValueError, match="beam_weight must be a finite number"):
        BeamReranker(*hmlstm(), beam_weight=float("inf"))
    with pytest.raises(ValueError, match="set by the reranker"):
        models["reranker"].generate(captioner, processor, image_inputs(processor), num_return_sequences=2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = write_synthetic_feature_store(tmp_path_factory.mktemp("store") / "syn", 5, num_regions=(2, 7),
                                        feature_size=F, progress=False)
    records = [{"image_id": str(i), "captions": [CAPTIONS[i], CAPTIONS[(i + 1) % 5]]} for i in range(5)]
    return CaptioningDataset(records, FeatureStore(out), attributes={"0": ["red"], "3": ["cross", "star"]})


def test_evaluate_model_with_a_reranker(models, dataset):
    captioner, processor, reranker = models["captioner"], models["processor"], models["reranker"]
    options = dict(batch_size=2, max_new_tokens=8, progress=False)
    scores, predictions = evaluate_model(captioner, processor, dataset, metrics=["CIDEr"], reranker=reranker,
                                         rerank_beam_weight=0.0, **options)
    assert set(scores) == {"CIDEr"} and np.isfinite(scores["CIDEr"])
    batch = CaptioningCollator(processor, with_captions=False)([dataset[i] for i in range(5)])
    expected = reranker.generate(captioner, processor, model_inputs(batch), beam_weight=0.0, max_new_tokens=8)
    assert predictions == dict(zip(batch["image_ids"], expected.captions))  # batches of 2 = one batch of 5
    # a huge weight: the captions of plain beam search with K beams
    plain = generate_captions(captioner, processor, dataset, num_beams=K, **options)
    assert generate_captions(captioner, processor, dataset, reranker=reranker, rerank_beam_weight=1e6,
                             **options) == plain
    with pytest.raises(ValueError, match="need a reranker"):
        generate_captions(captioner, processor, dataset, rerank_candidates=3, **options)
