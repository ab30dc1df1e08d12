"""Evaluation of the retrieval model: metric plumbing on hand-built embeddings, grounding, phrase queries, the CLI."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from processing.retrieval_evaluation import (
    RetrievalEmbeddings,
    grounding_results,
    load_phrase_annotations,
    phrase_query_metrics,
    resolve_protocol,
    retrieval_results,
)
from processing.retrieval_metrics import fold_averaged_retrieval_metrics, region_phrase_grounding_accuracy

ROOT = Path(__file__).resolve().parents[1]


def embeddings(image_embeds, sentence_embeds, sentence_image, **extra):
    """RetrievalEmbeddings from hand-built arrays (cosines are plain dot products here)."""
    image_embeds = np.asarray(image_embeds, dtype=np.float32)
    sentence_image = np.asarray(sentence_image, dtype=np.int64)
    values = dict(
        image_ids=[f"img{i}" for i in range(len(image_embeds))],
        image_embeds=image_embeds,
        region_embeds=None,
        region_mask=np.ones((len(image_embeds), 1), dtype=bool),
        region_boxes=None,
        sentences=[f"sentence {s}" for s in range(len(sentence_image))],
        sentence_image=sentence_image,
        sentence_number=np.zeros(len(sentence_image), dtype=np.int64),
        sentence_embeds=np.asarray(sentence_embeds, dtype=np.float32),
        phrase_embeds=None,
        phrase_spans=None,
        phrase_sentence=None,
        hierarchical=True,
    )
    values.update(extra)
    return RetrievalEmbeddings(**values)


# ------------------------------------------------------------------------------------------------- retrieval


def test_identity_embeddings_retrieve_perfectly():
    images = np.eye(3)
    sentences = images[[0, 0, 1, 1, 2, 2]]  # two captions per image, each equal to its image
    result = retrieval_results(embeddings(images, sentences, [0, 0, 1, 1, 2, 2]), protocol="full")
    assert result["protocol"] == ["full"] and result["images"] == 3 and result["sentences"] == 6
    for direction in ("annotation", "search"):
        assert result["full"][direction]["r1"] == 100.0 and result["full"][direction]["medr"] == 1.0
    assert result["full"]["rsum"] == 600.0


def test_known_similarity_gives_known_ranks():
    # image_embeds = identity, so similarity[i, j] = sentence_embeds[j, i]: sentence j scores image i with S[i, j]
    similarity = np.array([
        [0.9, 0.1, 0.3, 0.2],
        [0.5, 0.8, 0.4, 0.1],
        [0.7, 0.6, 0.2, 0.3],
        [0.1, 0.2, 0.9, 0.4],
    ])
    result = retrieval_results(embeddings(np.eye(4), similarity.T, [0, 1, 2, 3]), protocol="auto")["full"]
    # search ranks [0, 0, 3, 0]; annotation ranks [0, 0, 3, 1]
    assert result["search"]["r1"] == 75.0 and result["search"]["meanr"] == pytest.approx(1.75)
    assert result["annotation"]["r1"] == 50.0 and result["annotation"]["r5"] == 100.0
    assert result["annotation"]["medr"] == 1.0 and result["annotation"]["meanr"] == pytest.approx(2.0)
    assert result["rsum"] == pytest.approx(50 + 100 + 100 + 75 + 100 + 100)


@pytest.mark.parametrize("n_images, protocol, keys", [
    (5000, "auto", ["1k", "5k"]), (1000, "auto", ["full"]), (2000, "auto", ["full", "1k"]), (250, "auto", ["full"]),
    (5000, "coco5k", ["5k"]), (3000, "coco1k", ["1k"]), (250, "full", ["full"]),
])
def test_protocols(n_images, protocol, keys):
    assert resolve_protocol(protocol, n_images) == keys


@pytest.mark.parametrize("n_images, protocol, message", [
    (250, "coco5k", "needs the 5000-image"), (1500, "coco1k", "multiple of 1000"), (10, "cocoX", "protocol must be"),
])
def test_bad_protocols(n_images, protocol, message):
    with pytest.raises(ValueError, match=message):
        resolve_protocol(protocol, n_images)


def test_1k_folds_on_2000_images():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2000, 16)).astype(np.float32)
    sentences = images + rng.normal(scale=2.0, size=images.shape).astype(np.float32)  # noisy: not perfect
    owner = np.arange(2000)
    result = retrieval_results(embeddings(images, sentences, owner), protocol="auto")
    assert result["protocol"] == ["full", "1k"] and len(result["1k"]["folds"]) == 2
    expected = fold_averaged_retrieval_metrics(images @ sentences.T, n_folds=2, sentence_image=owner)
    assert result["1k"]["rsum"] == pytest.approx(expected["rsum"])
    assert result["1k"]["annotation"]["r1"] > result["full"]["annotation"]["r1"]  # 1,000 rivals instead of 2,000


# ------------------------------------------------------------------------------------------------- grounding

# one image, three regions; sentence "a red circle near a blue square" (words 0-6), extracted spans (0, 3), (3, 7)
REGION_BOXES = np.array([[[0.0, 0.0, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9], [0.0, 0.6, 0.3, 0.9]]], dtype=np.float32)
REGIONS = np.eye(3, dtype=np.float32)[None]


def grounding_case(phrase_embeds):
    return embeddings(
        np.ones((1, 3)), np.ones((1, 3)), [0], sentences=["A red circle near a blue square."],
        region_embeds=REGIONS, region_mask=np.ones((1, 3), dtype=bool), region_boxes=REGION_BOXES,
        phrase_embeds=np.asarray(phrase_embeds, dtype=np.float32), phrase_spans=np.array([[0, 3], [3, 7]]),
        phrase_sentence=np.array([0, 0]))


def annotation(first, phrase, *boxes):
    from processing.tokenization_glied import split_caption

    return {"first_word_index": first, "phrase": phrase, "words": split_caption(phrase), "boxes": np.array(boxes)}


def test_grounding_hand_built():
    # phrase 0 points at region 0 (its gold box: right), phrase 1 at region 1 (gold is region 2's box: wrong)
    case = grounding_case([[1, 0, 0], [0.2, 0.9, 0.1]])
    annotations = {"img0": [[annotation(0, "a red circle", [0.0, 0.0, 0.4, 0.4]),
                             annotation(4, "a blue square", [0.0, 0.62, 0.3, 0.9]),  # IoU with region 2: 0.93
                             annotation(2, "a blue square", [0, 0, 1, 1])]]}  # words 2-4 differ: unaligned
    result = grounding_results(case, annotations, phrases="extracted")
    assert result["accuracy"] == 0.5 and result["upper_bound"] == 1.0
    assert (result["annotated"], result["scored"], result["unaligned"]) == (3, 2, 1)
    # the same answer as the metric module's index-free box variant (one gold box per phrase)
    scores = np.array([[1, 0, 0], [0.2, 0.9, 0.1]])
    assert region_phrase_grounding_accuracy(scores, region_boxes=REGION_BOXES[0],
                                            gold_boxes=[[0.0, 0.0, 0.4, 0.4], [0.0, 0.62, 0.3, 0.9]]) == 0.5
    # a second gold box that the chosen region matches makes phrase 1 right under "any", not under "union"
    annotations["img0"][0][1] = annotation(4, "a blue square", [0.0, 0.62, 0.3, 0.9], [0.5, 0.5, 0.9, 0.9])
    assert grounding_results(case, annotations, phrases="extracted")["accuracy"] == 1.0
    union = grounding_results(case, annotations, phrases="extracted", multiple_boxes="union")
    assert union["accuracy"] == 0.5 and union["upper_bound"] == 0.5


def test_grounding_ties_are_pessimistic_and_shared_spans_skipped():
    case = grounding_case([[0.5, 0.5, 0], [0, 0, 1]])  # phrase 0 ties between region 0 (right) and 1 (wrong)
    annotations = {"img0": [[annotation(0, "a red circle", [0.0, 0.0, 0.4, 0.4]),
                             annotation(4, "a blue square", [0.0, 0.6, 0.3, 0.9])]]}
    assert grounding_results(case, annotations, phrases="extracted")["accuracy"] == 0.5
    # two annotated phrases inside one extracted span: neither is scored
    annotations = {"img0": [[annotation(0, "a red", [0, 0, 1, 1]), annotation(2, "circle", [0, 0, 1, 1]),
                             annotation(4, "a blue square", [0.0, 0.6, 0.3, 0.9])]]}
    result = grounding_results(case, annotations, phrases="extracted")
    assert (result["shared"], result["scored"], result["accuracy"]) == (2, 1, 1.0)
    # an annotated phrase across two extracted spans has no containing span
    annotations = {"img0": [[annotation(2, "circle near", [0, 0, 1, 1])]]}
    result = grounding_results(case, annotations, phrases="extracted")
    assert (result["unmatched"], result["scored"], result["accuracy"]) == (1, 0, None)


def test_grounding_of_the_flat_model_is_not_available():
    case = grounding_case([[1, 0, 0], [0, 1, 0]])
    case.hierarchical = False
    result = grounding_results(case, {}, phrases="extracted")
    assert result["available"] is False and "flat model" in result["reason"]


def test_load_phrase_annotations(tmp_path):
    data = {"images": [
        {"filename": "a.jpg", "imgid": 0, "split": "test", "width": 200, "height": 100,
         "sentences": [{"raw": "A dog.", "phrases": [{"first_word_index": 0, "phrase": "A dog",
                                                      "boxes": [[20, 10, 100, 50]]}]},
                       {"raw": "Grass."}]},
        {"filename": "b.jpg", "imgid": 1, "split": "test", "sentences": [{"raw": "Nothing annotated."}]},
    ]}
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(data))
    loaded = load_phrase_annotations(path)
    assert list(loaded) == ["a"] and len(loaded["a"]) == 2 and loaded["a"][1] == []
    entry = loaded["a"][0][0]
    assert entry["words"] == ["a", "dog"] and np.allclose(entry["boxes"], [[0.1, 0.1, 0.5, 0.5]])
    del data["images"][0]["width"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="no 'width'/'height'"):
        load_phrase_annotations(path)
    data["images"][0]["width"] = 200
    data["images"][0]["sentences"][0]["phrases"][0]["boxes"] = [[100, 10, 20, 50]]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="boxes"):
        load_phrase_annotations(path)


# -------------------------------------------------------------------------------------------- phrase queries


def test_phrase_query_metrics_known_case():
    scores = np.array([
        [0.9, 0.8, 0.7, 0.6, 0.5],  # relevant 1, 3: positions 2 and 4 -> AP (1/2 + 2/4) / 2 = 0.5, rank 1
        [0.1, 0.5, 0.5, 0.2, 0.3],  # relevant 2, tied with irrelevant 1 (pessimistic): position 2 -> AP 0.5
        [0.3, 0.2, 0.1, 0.0, 0.0],  # relevant 0: first -> AP 1
    ])
    relevant = [[1, 3], [2], [0]]
    metrics = phrase_query_metrics(scores, relevant)
    assert metrics["r1"] == pytest.approx(100 / 3) and metrics["r5"] == 100.0
    assert metrics["medr"] == 2.0 and metrics["meanr"] == pytest.approx(5 / 3)  # ranks 1, 1, 0 (0-based)
    assert metrics["p@10"] == pytest.approx(100 * (2 + 1 + 1) / 30)
    assert metrics["map"] == pytest.approx(100 * 2 / 3) and metrics["queries"] == 3
    matrix = np.zeros_like(scores, dtype=bool)
    for q, indices in enumerate(relevant):
        matrix[q, indices] = True
    assert phrase_query_metrics(scores, matrix) == metrics
    with pytest.raises(ValueError, match="without any relevant image"):
        phrase_query_metrics(scores, [[1], [], [0]])
    with pytest.raises(ValueError, match="must lie in"):
        phrase_query_metrics(scores, [[1], [7], [0]])


# ------------------------------------------------------------------------------- with a model and a processor

F_SIZE = 6


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """12 test scenes written as the Karpathy JSON, a feature store whose regions are the objects' exact boxes
    plus the whole image (random features), a rules-backend processor and a tiny hierarchical and flat model."""
    import torch

    from modeling_glied.modeling_hmlstm import HMLSTMConfig, HMLSTMModel
    from processing.captioning_data import CaptioningDataset
    from processing.feature_stores import FeatureStore, convert_feature_store
    from processing.processing_hmlstm import HMLSTMProcessor
    from processing.quickstart_data import generate_scenes, write_karpathy_json
    from processing.tokenization_glied import GLIEDTokenizer

    root = tmp_path_factory.mktemp("quickstart_retrieval")
    scenes = generate_scenes(num_train=40, num_val=0, num_test=12, image_size=96, seed=4)
    paths = write_karpathy_json(scenes, root)
    npz = root / "npz"
    npz.mkdir()
    rng = np.random.default_rng(0)
    for record in scenes["test"]:
        boxes = np.concatenate([record["boxes"], [[0, 0, 96, 96]]]).astype(np.float32)
        np.savez(npz / f"{record['image_id']}.npz", feat=rng.normal(size=(len(boxes), F_SIZE)).astype(np.float32),
                 boxes=boxes, image_w=96, image_h=96)
    store = FeatureStore(convert_feature_store(npz, root / "features", format="npz", progress=False))
    captions = [c for split in scenes.values() for r in split for c in r["captions"]]
    processor = HMLSTMProcessor(GLIEDTokenizer.from_captions(captions, count_threshold=0),
                                region_feature_size=F_SIZE, phrase_backend="rules")
    models = {}
    for hierarchical in (True, False):
        torch.manual_seed(0)
        models[hierarchical] = HMLSTMModel(HMLSTMConfig(
            vocab_size=len(processor.tokenizer), word_embedding_size=8, hidden_size=8, embedding_size=8,
            region_feature_size=F_SIZE, hierarchical=hierarchical)).eval()
    dataset = CaptioningDataset.from_files(paths["dataset_json"], "test", store)
    return dict(root=root, scenes=scenes, paths=paths, store=store, processor=processor, models=models,
                dataset=dataset)


def test_embed_dataset(quickstart):
    import torch

    from processing.retrieval_evaluation import embed_dataset

    model, processor, dataset = quickstart["models"][True], quickstart["processor"], quickstart["dataset"]
    out = embed_dataset(model, processor, dataset, batch_size=5, progress=False)
    test = quickstart["scenes"]["test"]
    assert out.image_ids == [r["image_id"] for r in test] and out.image_embeds.shape == (12, 8)
    assert out.sentences == [c for r in test for c in r["captions"]]
    assert out.sentence_image.tolist() == [i for i in range(12) for _ in range(5)]
    assert out.sentence_number.tolist() == [k for _ in range(12) for k in range(5)]
    for row, record in enumerate(test):
        n = len(record["objects"])
        assert out.region_mask[row].sum() == n + 1
        assert np.allclose(out.region_boxes[row, :n], record["boxes"] / 96, atol=1e-6)
    assert np.allclose(np.linalg.norm(out.image_embeds, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(out.region_embeds, axis=-1), out.region_mask, atol=1e-5)
    # batching does not change anything
    whole = embed_dataset(model, processor, dataset, batch_size=128, progress=False)
    assert np.allclose(whole.sentence_embeds, out.sentence_embeds, atol=1e-5)
    assert np.allclose(whole.phrase_embeds, out.phrase_embeds, atol=1e-5)
    # the stored phrases are the processor's, and the embeddings the model's
    s = 7
    spans, embeds = out.phrases_of(s)
    assert [tuple(span) for span in spans.tolist()] == [span for _, span in processor.phrases(out.sentences[s])]
    inputs = processor(sentences=[out.sentences[s]], return_tensors="pt")
    with torch.no_grad():
        sentence, phrases = model.embed_sentences(inputs["input_ids"], inputs["attention_mask"],
                                                  inputs["phrase_spans"], inputs["phrase_mask"])
    assert np.allclose(sentence[0].numpy(), out.sentence_embeds[s], atol=1e-5)
    assert np.allclose(phrases[0].numpy(), embeds, atol=1e-5)
    flat = embed_dataset(quickstart["models"][False], processor, dataset, progress=False, with_regions=False)
    assert flat.phrase_embeds is None and flat.region_embeds is None and not flat.hierarchical


def test_embed_texts_with_given_spans(quickstart):
    import torch

    from processing.retrieval_evaluation import embed_texts

    model, processor = quickstart["models"][True], quickstart["processor"]
    texts = ["A small red circle left of a blue square.", "Two green stars."]
    _, phrases = embed_texts(model, processor, texts, spans=[[(1, 4), (6, 9)], [(0, 3)]])
    _, whole = embed_texts(model, processor, texts, spans="whole")
    inputs = processor(sentences=texts, return_tensors="pt")
    with torch.no_grad():  # a phrase embedding depends on its own span only
        _, alone = model.embed_sentences(inputs["input_ids"], inputs["attention_mask"],
                                         torch.tensor([[[6, 9]], [[0, 3]]]), torch.ones(2, 1, dtype=torch.long))
    assert [p.shape for p in phrases] == [(2, 8), (1, 8)]
    assert np.allclose(phrases[0][1], alone[0, 0].numpy(), atol=1e-5)
    assert np.allclose(phrases[1][0], alone[1, 0].numpy(), atol=1e-5)
    assert np.allclose(whole[1], alone[1, 0].numpy(), atol=1e-5)  # "two green stars" is the whole of text 1
    with pytest.raises(ValueError, match="does not fit"):
        embed_texts(model, processor, texts, spans=[[(0, 3)], [(2, 4)]])


def test_grounding_and_phrase_queries_on_quickstart(quickstart):
    from processing.quickstart_data import quickstart_phrase_queries
    from processing.retrieval_evaluation import embed_dataset, evaluate_phrase_queries, phrase_query_scores

    model, processor, dataset = quickstart["models"][True], quickstart["processor"], quickstart["dataset"]
    out = embed_dataset(model, processor, dataset, progress=False)
    annotations = load_phrase_annotations(quickstart["paths"]["dataset_json"], out.image_ids)
    annotated = sum(len(phrases) for sentences in annotations.values() for phrases in sentences)
    result = grounding_results(out, annotations, model, processor)
    # every annotated phrase is scored; the exact object boxes are regions, so the upper bound is 1
    assert result["annotated"] == result["scored"] == annotated > 0
    assert result["upper_bound"] == 1.0 and 0.0 <= result["accuracy"] <= 1.0
    extracted = grounding_results(out, quickstart["paths"]["dataset_json"], phrases="extracted")
    assert extracted["annotated"] == annotated
    assert extracted["scored"] + extracted["unmatched"] + extracted["shared"] == annotated
    assert extracted["scored"] > 0.9 * annotated  # the rule chunker finds the object phrases
    with pytest.raises(ValueError, match="pass model and processor"):
        grounding_results(out, annotations)

    queries = quickstart_phrase_queries(quickstart["paths"]["dataset_json"], split="test")
    scores, scoring = phrase_query_scores(model, processor, out, [q["query"] for q in queries])
    assert scoring == "phrase" and scores.shape == (len(queries), 12)
    from processing.retrieval_evaluation import embed_texts

    _, phrase = embed_texts(model, processor, [queries[0]["query"]], spans="whole")
    image = 3
    regions = out.region_embeds[image][out.region_mask[image]]
    assert scores[0, image] == pytest.approx(float((regions @ phrase[0]).max()), abs=1e-5)
    sentence_scores, scoring = phrase_query_scores(model, processor, out, [queries[0]["query"]], scoring="sentence")
    sentence, _ = embed_texts(model, processor, [queries[0]["query"]])
    assert scoring == "sentence" and np.allclose(sentence_scores, sentence @ out.image_embeds.T, atol=1e-6)
    metrics = evaluate_phrase_queries(model, processor, out, queries)
    assert metrics["all"]["queries"] == len(queries) and metrics["skipped"] == 0
    assert metrics["seen"]["queries"] + metrics["novel"]["queries"] == len(queries)
    for group in ("all", "seen", "novel"):
        assert 0 <= metrics[group]["map"] <= 100 and metrics[group]["r1"] <= metrics[group]["r10"]

    flat = quickstart["models"][False]
    flat_out = embed_dataset(flat, processor, dataset, progress=False, with_regions=False)
    assert grounding_results(flat_out, annotations)["available"] is False
    assert evaluate_phrase_queries(flat, processor, flat_out, queries)["scoring"] == "sentence"
    with pytest.raises(ValueError, match="hierarchical model"):
        phrase_query_scores(flat, processor, flat_out, ["a red circle"], scoring="phrase")


def load_script(name):
    # examples/ is not put on sys.path: its evaluate.py would shadow the `evaluate` library for the other tests
    spec = importlib.util.spec_from_file_location(f"glied_examples_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_end_to_end(quickstart, tmp_path, capsys):
    script = load_script("evaluate_retrieval")
    for hierarchical in (True, False):
        model_dir = tmp_path / f"model_{hierarchical}"
        quickstart["models"][hierarchical].save_pretrained(model_dir)
        quickstart["processor"].save_pretrained(model_dir)
        output = tmp_path / f"metrics_{hierarchical}.json"
        script.main(["--model", str(model_dir), "--captions", str(quickstart["paths"]["dataset_json"]),
                     "--features", str(quickstart["store"].path), "--split", "test", "--grounding",
                     "--phrase-queries", "quickstart", "--output", str(output), "--batch-size", "5",
                     "--device", "cpu"])
        printed = capsys.readouterr().out
        results = json.loads(output.read_text())
        assert results["model"] == {"hierarchical": hierarchical} and results["split"] == "test"
        retrieval = results["retrieval"]
        assert retrieval["protocol"] == ["full"] and (retrieval["images"], retrieval["sentences"]) == (12, 60)
        for direction, worst in (("annotation", 60 - 5 + 1), ("search", 12)):  # ranks among rivals + 1
            row = retrieval["full"][direction]
            assert 0 <= row["r1"] <= row["r5"] <= row["r10"] <= 100 and 1 <= row["medr"] <= worst
        assert 0 <= retrieval["full"]["rsum"] <= 600
        queries = results["phrase_queries"]
        assert queries["scoring"] == ("phrase" if hierarchical else "sentence")
        assert {"all", "seen", "novel"} <= set(queries) and 0 <= queries["all"]["p@10"] <= 100
        if hierarchical:
            assert 0 <= results["grounding"]["accuracy"] <= 1 and results["grounding"]["upper_bound"] == 1.0
            assert "Region-phrase grounding (annotated phrases" in printed
        else:
            assert results["grounding"]["available"] is False and "not available" in printed
        assert "| full |" in printed and "Phrase-level queries" in printed
