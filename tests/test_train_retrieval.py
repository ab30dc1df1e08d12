"""End-to-end runs of examples/train_retrieval.py (the HM-LSTM through train.py's loop) on a small generated data
set, then examples/evaluate_retrieval.py on the result (slow; they run in CI)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from ddp_teardown_check import MARKER as TEARDOWN_MARKER
from launch import launch_command, run_script
from PIL import Image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "configs" / "quickstart_hmlstm.yaml"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from processing.quickstart_data import prepare_quickstart_data

    return prepare_quickstart_data(tmp_path_factory.mktemp("quickstart"), num_train=40, num_val=10, num_test=10,
                                   progress=False)


def run(data, output_dir, *extra, processes=1):
    args = [f"output_dir={output_dir}", f"data.captions={data['dataset_json']}", f"data.features={data['features']}",
            "train.epochs=2", "train.batch_size=10", "train.warmup_steps=1", "model.word_embedding_size=16",
            "model.hidden_size=32", "model.embedding_size=32", "evaluation.batch_size=8", "evaluation.grounding=true",
            *extra]
    return run_script([*launch_command(ROOT / "examples" / "train_retrieval.py", processes), "--config", str(CONFIG),
                       "--set", *args], cwd=ROOT)


def test_hierarchical_run_resumes_exactly_and_reports_retrieval_grounding_and_phrase_queries(data, tmp_path):
    run(data, tmp_path / "straight")
    run(data, tmp_path / "resumed", "train.max_steps=5", "train.checkpoint_every=2")  # stops mid-epoch 2
    assert not (tmp_path / "resumed" / "test_metrics.json").exists()
    result = run(data, tmp_path / "resumed", "train.checkpoint_every=2")
    assert "resumed from" in result.stdout + result.stderr
    straight = load_file(tmp_path / "straight" / "checkpoints" / "last" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "checkpoints" / "last" / "model.safetensors")
    assert straight.keys() == resumed.keys() and "phrase_lstm.weight_hh_l0" in straight
    assert all(bool((straight[k] == resumed[k]).all()) for k in straight)

    summary = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary["global_step"] == 8 and 0.0 < summary["best_val_rsum"] <= 600.0
    metrics = json.loads((tmp_path / "straight" / "test_metrics.json").read_text())
    full = metrics["retrieval"]["full"]
    assert metrics["retrieval"]["images"] == 10 and metrics["retrieval"]["sentences"] == 50
    assert 0.0 <= full["annotation"]["r1"] <= full["annotation"]["r5"] <= full["annotation"]["r10"] <= 100.0
    assert full["rsum"] == pytest.approx(sum(full[d][k] for d in ("annotation", "search") for k in ("r1", "r5", "r10")))
    assert metrics["grounding"]["scored"] > 0 and 0.0 <= metrics["grounding"]["accuracy"] <= 1.0
    assert metrics["phrase_queries"]["scoring"] == "phrase" and metrics["phrase_queries"]["all"]["queries"] > 0
    history = json.loads((tmp_path / "straight" / "checkpoints" / "last" / "trainer_state.json").read_text())["history"]
    steps = [h for h in history if "step" in h]
    assert len(steps) == 8 and all(h["phrase_loss"] > 0 for h in steps)
    with Image.open(tmp_path / "straight" / "training_curve.png") as curve:
        assert curve.size[0] > 500

    # the saved model and processor load through the Auto classes and embed a query
    import torch
    from transformers import AutoModel, AutoProcessor

    import modeling_glied  # noqa: F401  (registers the Auto classes)
    from processing import HMLSTMProcessor

    processor = AutoProcessor.from_pretrained(tmp_path / "straight" / "best")
    model = AutoModel.from_pretrained(tmp_path / "straight" / "best").eval()
    assert isinstance(processor, HMLSTMProcessor) and processor.phrase_backend in ("spacy", "rules")
    with torch.no_grad():
        sentences, phrases = model.embed_sentences(**{k: v for k, v in processor(
            sentences=["a small red circle to the left of a blue square"]).items()})
    assert sentences.shape == (1, 32) and phrases.shape[1] >= 2

    evaluation = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "evaluate_retrieval.py"), "--model", str(tmp_path / "straight" / "best"),
         "--captions", str(data["dataset_json"]), "--features", str(data["features"]), "--split", "test",
         "--grounding", "--phrase-queries", "quickstart", "--output", str(tmp_path / "evaluation.json")],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    again = json.loads((tmp_path / "evaluation.json").read_text())
    assert again["retrieval"]["full"]["rsum"] == pytest.approx(full["rsum"], abs=1e-6)
    assert "Image-sentence retrieval" in evaluation.stdout


def test_two_processes_train_one_model(data, tmp_path):
    two_processes = run(data, tmp_path / "two", "evaluation.grounding=false", processes=2)
    assert two_processes.stdout.count(TEARDOWN_MARKER) == 2  # both ranks freed the DDP wrapper before teardown
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["global_step"] == 8  # 40 images / 10 a step x 2 epochs
    assert summary["test_metrics"]["retrieval"]["sentences"] == 50  # the main process tests the whole split


def test_flat_baseline_run(data, tmp_path):
    result = run(data, tmp_path / "flat", "model.hierarchical=false")
    assert "phrases (" not in result.stderr  # the flat model parses no phrase
    weights = load_file(tmp_path / "flat" / "best" / "model.safetensors")
    assert not any(k.startswith("phrase_") for k in weights)
    metrics = json.loads((tmp_path / "flat" / "test_metrics.json").read_text())
    assert metrics["model"]["hierarchical"] is False
    assert metrics["grounding"]["available"] is False
    assert metrics["phrase_queries"]["scoring"] == "sentence"
