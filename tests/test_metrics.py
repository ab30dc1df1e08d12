"""COCO caption metrics (processing.metrics) and the offline `evaluate` module that wraps them."""
import json
import os

import numpy as np
import pytest

pytest.importorskip("pycocoevalcap")
from pycocoevalcap.bleu.bleu import Bleu  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from pycocoevalcap.rouge.rouge import Rouge  # noqa: E402
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer  # noqa: E402

from processing import metrics  # noqa: E402
from processing.metrics import (  # noqa: E402
    compute_caption_metrics,
    evaluate_captions,
    read_coco_results,
    spice_jar_paths,
    write_coco_results,
)

FAST = ("BLEU", "ROUGE_L", "CIDEr")
METRIC_MODULE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "processing", "metric_module")

REFERENCES = {
    101: ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave in the ocean.",
          "A person on a surfboard riding a wave."],
    102: ["Two dogs playing with a frisbee in the grass.", "Dogs run across a field chasing a frisbee."],
    103: ["A plate of food with broccoli and rice.", "A white plate topped with rice, meat and broccoli.",
          "Some food on a plate on a table."],
    104: ["A red bus driving down a city street.", "A double decker bus on the road."],
    105: ["A cat sleeping on a wooden bench.", "A black cat is lying on a bench outside."],
}
GOOD = {101: "A man riding a wave on top of a surfboard.", 102: "Two dogs playing with a frisbee in the grass.",
        103: "A plate of food with broccoli and rice.", 104: "A red bus driving down a city street.",
        105: "A cat sleeping on a wooden bench."}
BAD = {101: "A bowl of soup on a table.", 102: "A man is riding a bus.", 103: "A cat on a surfboard.",
       104: "Two plates of food.", 105: "A dog in the snow."}


def pycoco_direct(references, predictions):
    """Tokenise with PTB and run BLEU, ROUGE-L and CIDEr directly, as COCOEvalCap.evaluate() does."""
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in references[k]] for k in predictions})
    res = tokenizer.tokenize({k: [{"caption": c}] for k, c in predictions.items()})
    bleu, bleu_per = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_per = Rouge().compute_score(gts, res)
    cider, cider_per = Cider().compute_score(gts, res)
    scores = {f"BLEU-{i + 1}": bleu[i] for i in range(4)}
    scores.update({"ROUGE-L": rouge, "CIDEr": cider})
    return scores, {"BLEU-4": bleu_per[3], "ROUGE-L": rouge_per, "CIDEr": cider_per}, (gts, res)


@pytest.fixture(scope="module")
def mixed_predictions():
    return {101: GOOD[101], 102: BAD[102], 103: GOOD[103], 104: BAD[104], 105: "a cat on a bench"}


@pytest.fixture(scope="module")
def mixed_evaluation(mixed_predictions):
    return evaluate_captions(REFERENCES, mixed_predictions, FAST)


def test_values_equal_pycocoevalcap_called_directly(mixed_predictions, mixed_evaluation):
    expected, expected_per_image, _ = pycoco_direct(REFERENCES, mixed_predictions)
    assert list(mixed_evaluation.scores) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"]
    for key, value in expected.items():
        assert mixed_evaluation.scores[key] == pytest.approx(value, abs=1e-12), key
        assert isinstance(mixed_evaluation.scores[key], float)
    for key in ("BLEU-4", "ROUGE-L", "CIDEr"):
        ours = [mixed_evaluation.per_image[k][key] for k in mixed_predictions]
        np.testing.assert_allclose(ours, expected_per_image[key], rtol=0, atol=1e-12)
    assert mixed_evaluation.skipped == {}


def test_per_image_scores_rank_good_above_bad(mixed_evaluation):
    per_image = mixed_evaluation.per_image
    assert set(per_image) == set(REFERENCES)
    for good, bad in ((101, 102), (103, 104)):
        for key in ("BLEU-1", "ROUGE-L", "CIDEr"):
            assert per_image[good][key] > per_image[bad][key], (key, good, bad)


def test_perfect_predictions_beat_imperfect_ones():
    perfect = compute_caption_metrics(REFERENCES, GOOD, FAST)
    wrong = compute_caption_metrics(REFERENCES, BAD, ["bleu", "rouge-l", "cider-d"])  # names are case/dash-free
    assert set(perfect) == set(wrong) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"}
    for key in perfect:
        assert perfect[key] > wrong[key], key
    assert perfect["BLEU-1"] > 0.9 and perfect["ROUGE-L"] > 0.7 and perfect["CIDEr"] > 1.0


def test_pretokenised_input_skips_ptb():
    _, _, (gts, res) = pycoco_direct(REFERENCES, GOOD)
    ours = compute_caption_metrics(gts, {k: v[0] for k, v in res.items()}, ["CIDEr"], tokenize=False)
    assert ours["CIDEr"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12)


def test_one_element_list_predictions_are_accepted():
    as_lists = {k: [v] for k, v in GOOD.items()}
    assert compute_caption_metrics(REFERENCES, as_lists, ["CIDEr"], tokenize=False) == compute_caption_metrics(
        REFERENCES, GOOD, ["CIDEr"], tokenize=False
    )


@pytest.mark.parametrize(
    "references,predictions,message",
    [
        (REFERENCES, {999: "a dog"}, r"have no references, e\.g\. \[999\]"),
        (REFERENCES, {101: []}, "image 101 is an empty list"),
        (REFERENCES, {101: ["a", "b"]}, "holds 2 captions"),
        (REFERENCES, {101: 5}, "must be a string"),
        (REFERENCES, {}, "predictions is empty"),
        ({101: []}, {101: "a dog"}, "references of image 101 is an empty list"),
        ({101: "a man surfing"}, {101: "a dog"}, "must be a list of strings"),
        ({101: ["a", None]}, {101: "a dog"}, "must all be strings"),
        ([["a"]], {0: "a"}, "references must be a dict"),
    ],
)
def test_input_validation(references, predictions, message):
    with pytest.raises(ValueError, match=message):
        compute_caption_metrics(references, predictions, FAST)


def test_unknown_metric_names_are_rejected():
    with pytest.raises(ValueError, match="unknown caption metric 'BLEURT'"):
        compute_caption_metrics(REFERENCES, GOOD, ["BLEURT"])
    with pytest.raises(ValueError, match="metrics is empty"):
        compute_caption_metrics(REFERENCES, GOOD, [])


def test_spice_jars_are_looked_up_where_pycocoevalcap_spice_looks():
    from pycocoevalcap.spice import get_stanford_models

    main, models = spice_jar_paths()
    lib = os.path.join(os.path.dirname(os.path.abspath(get_stanford_models.__file__)), "lib")
    assert main == os.path.join(lib, "stanford-corenlp-3.6.0.jar")
    assert models == os.path.join(lib, "stanford-corenlp-3.6.0-models.jar")


@pytest.fixture
def no_spice_jars(monkeypatch, tmp_path):
    """Point the jar lookup at an empty folder, and make sure SPICE (which would download) is never started."""
    from pycocoevalcap.spice import spice as spice_module

    missing = [str(tmp_path / "lib" / f"stanford-corenlp-3.6.0{suffix}.jar") for suffix in ("", "-models")]
    monkeypatch.setattr(metrics, "spice_jar_paths", lambda: missing)

    def forbidden(self):
        raise AssertionError("Spice() was constructed: it would try to download CoreNLP")

    monkeypatch.setattr(spice_module.Spice, "__init__", forbidden)
    return tmp_path / "lib"


def test_spice_requested_without_jars_raises_with_instructions(no_spice_jars):
    with pytest.raises(RuntimeError) as info:
        compute_caption_metrics(REFERENCES, GOOD, ["CIDEr", "SPICE"])
    message = str(info.value)
    assert "stanford-corenlp-3.6.0.jar" in message and "stanford-corenlp-3.6.0-models.jar" in message
    assert str(no_spice_jars) in message and "stanford-corenlp-full-2015-12-09.zip" in message


def test_default_metrics_skip_spice_with_a_warning(no_spice_jars, monkeypatch):
    # METEOR is stubbed here (its own slow test runs Java); the default set is under test
    monkeypatch.setitem(metrics._SCORERS, "METEOR", lambda gts, res: {"METEOR": (0.25, [0.25] * len(gts))})
    with pytest.warns(RuntimeWarning, match="SPICE skipped: SPICE needs Stanford CoreNLP 3.6.0"):
        result = evaluate_captions(REFERENCES, GOOD)
    assert list(result.scores) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]
    assert "SPICE" not in result.scores and "stanford-corenlp-3.6.0.jar" in result.skipped["SPICE"]


def test_coco_result_json_round_trip(tmp_path):
    predictions = {np.int64(391895): "a man riding a bike", 522418: "a woman cutting a cake", "img_7": "a dog"}
    path = write_coco_results(predictions, tmp_path / "sub" / "captions_val2014_glied_results.json")
    rows = json.load(open(path))
    assert rows[0] == {"image_id": 391895, "caption": "a man riding a bike"} and isinstance(rows[0]["image_id"], int)
    expected = {391895: "a man riding a bike", 522418: "a woman cutting a cake", "img_7": "a dog"}
    assert read_coco_results(path) == expected


def test_coco_result_json_errors(tmp_path):
    with pytest.raises(ValueError, match="must be a string"):
        write_coco_results({1: ["a dog"]}, tmp_path / "x.json")
    with pytest.raises(FileNotFoundError, match="no COCO result file"):
        read_coco_results(tmp_path / "absent.json")
    duplicate = tmp_path / "dup.json"
    duplicate.write_text(json.dumps([{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}]))
    with pytest.raises(ValueError, match="image 1 appears twice"):
        read_coco_results(duplicate)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"image_id": 1}))
    with pytest.raises(ValueError, match="JSON list"):
        read_coco_results(bad)


@pytest.mark.parametrize("target", ["glied_caption_metrics.py", ""])
def test_evaluate_module_loads_offline_and_agrees(target, tmp_path, mixed_predictions, mixed_evaluation):
    evaluate = pytest.importorskip("evaluate")
    module = evaluate.load(os.path.join(METRIC_MODULE, target) if target else METRIC_MODULE, cache_dir=str(tmp_path))
    ids = list(mixed_predictions)
    result = module.compute(
        predictions=[mixed_predictions[k] for k in ids], references=[REFERENCES[k] for k in ids], metrics=list(FAST)
    )
    assert result == pytest.approx(mixed_evaluation.scores, abs=1e-12)
    assert set(result) == set(mixed_evaluation.scores)


def test_evaluate_module_single_string_references(tmp_path):
    evaluate = pytest.importorskip("evaluate")
    module = evaluate.load(os.path.join(METRIC_MODULE, "glied_caption_metrics.py"), cache_dir=str(tmp_path))
    ids = sorted(GOOD)
    result = module.compute(predictions=[BAD[k] for k in ids], references=[REFERENCES[k][0] for k in ids],
                            metrics=["CIDEr"], tokenize=False)
    expected = compute_caption_metrics({k: [REFERENCES[k][0]] for k in ids}, BAD, ["CIDEr"], tokenize=False)
    assert result == pytest.approx(expected, abs=1e-12) and set(result) == {"CIDEr"}


@pytest.mark.slow
def test_meteor_matches_pycocoevalcap():
    """METEOR (Java, about 10 s a run) in the evaluation and pycocoevalcap's Meteor called directly agree."""
    from pycocoevalcap.meteor.meteor import Meteor

    predictions = {101: GOOD[101], 102: BAD[102], 103: GOOD[103], 104: BAD[104], 105: GOOD[105]}
    result = evaluate_captions(REFERENCES, predictions, ["BLEU", "METEOR", "ROUGE_L", "CIDEr"])
    assert list(result.scores) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]
    assert 0 < result.scores["METEOR"] < 1
    assert result.per_image[101]["METEOR"] > result.per_image[102]["METEOR"]
    _, _, (gts, res) = pycoco_direct(REFERENCES, predictions)
    scorer = Meteor()
    try:
        expected, expected_per_image = scorer.compute_score(gts, res)
    finally:
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()
    assert result.scores["METEOR"] == pytest.approx(expected, abs=1e-9)
    np.testing.assert_allclose([result.per_image[k]["METEOR"] for k in predictions], expected_per_image, atol=1e-9)
