"""End-to-end training runs of examples/train.py on a small generated data set (slow; they run in CI)."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from ddp_teardown_check import MARKER as TEARDOWN_MARKER
from launch import launch_command, run_script
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
# examples/ is not put on sys.path: its evaluate.py would shadow the `evaluate` library for the other tests
_spec = importlib.util.spec_from_file_location("glied_examples_train", ROOT / "examples" / "train.py")
_train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_train)
load_config = _train.load_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from processing.quickstart_data import prepare_quickstart_data

    return prepare_quickstart_data(tmp_path_factory.mktemp("quickstart"), num_train=40, num_val=8, num_test=8,
                                   progress=False)


def settings(data, output_dir, *extra):
    return [
        f"output_dir={output_dir}", f"data.captions={data['dataset_json']}", f"data.features={data['features']}",
        f"data.attributes={data['attributes_json']}", "train.epochs=2", "train.batch_size=10",
        "train.warmup_steps=1", "model.hidden_size=32", "model.intermediate_size=64", "evaluation.metrics=[CIDEr]",
        "evaluation.batch_size=8", *extra,
    ]


def run(args, processes=1):
    return run_script([*launch_command(ROOT / "examples" / "train.py", processes), "--config",
                       str(ROOT / "examples" / "configs" / "quickstart.yaml"), "--set", *args], cwd=ROOT)


def final_weights(output_dir):
    return load_file(Path(output_dir) / "checkpoints" / "last" / "model.safetensors")


def max_difference(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_two_processes_match_one_process_of_the_same_global_batch(data, tmp_path):
    # SGD: Adam turns rounding noise in exactly-zero gradients (attention key biases) into lr-sized steps
    common = ["train.optimizer=sgd", "train.learning_rate=0.05", "model.hidden_dropout_prob=0.0",
              "model.attention_probs_dropout_prob=0.0"]
    run(settings(data, tmp_path / "one", *common))
    two_processes = run(settings(data, tmp_path / "two", *common), processes=2)
    assert two_processes.stdout.count(TEARDOWN_MARKER) == 2  # both ranks freed the DDP wrapper before teardown
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    assert one["global_step"] == two["global_step"] == 8  # 40 images / 10 a step x 2 epochs
    assert max_difference(final_weights(tmp_path / "one"), final_weights(tmp_path / "two")) < 1e-6
    initial = load_file(tmp_path / "one" / "best" / "model.safetensors")
    assert max_difference(final_weights(tmp_path / "one"), initial) > 1e-3 or one["best_val_cider"] is not None


def test_a_stopped_run_resumes_as_if_never_stopped_then_self_critical_training(data, tmp_path):
    common = ["train.learning_rate=0.003", "train.checkpoint_every=2"]  # Adam, dropout on: RNG state matters
    run(settings(data, tmp_path / "straight", *common))
    run(settings(data, tmp_path / "resumed", *common, "train.max_steps=5"))  # stops mid-epoch 2
    state = json.loads((tmp_path / "resumed" / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert (state["global_step"], state["epoch"], state["step_in_epoch"]) == (5, 1, 1)
    assert not (tmp_path / "resumed" / "test_metrics.json").exists()
    result = run(settings(data, tmp_path / "resumed", *common))
    assert "resumed from" in result.stdout + result.stderr
    assert max_difference(final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")) == 0.0
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["global_step"] == 8 and 0.0 <= summary["test_metrics"]["CIDEr"] <= 10.0
    predictions = json.loads((tmp_path / "resumed" / "test_captions.json").read_text())
    assert len(predictions) == 8 and {"image_id", "caption"} <= set(predictions[0])
    with Image.open(tmp_path / "resumed" / "training_curve.png") as curve:
        assert curve.size[0] > 500 and curve.size[1] > 200

    run(settings(data, tmp_path / "scst", "train.stage=scst", f"train.init_from={tmp_path / 'straight' / 'best'}",
                 "train.epochs=1", "train.learning_rate=1e-5", "scst.num_samples=3", "scst.max_new_tokens=8"))
    scst = json.loads((tmp_path / "scst" / "summary.json").read_text())
    assert scst["stage"] == "scst" and scst["global_step"] == 4
    assert (tmp_path / "scst" / "cider_df.safetensors").exists()
    history = json.loads((tmp_path / "scst" / "checkpoints" / "last" / "trainer_state.json").read_text())["history"]
    assert all("reward" in h for h in history if "step" in h)

    evaluation = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "evaluate.py"), "--model", str(tmp_path / "straight" / "best"),
         "--captions", str(data["dataset_json"]), "--features", str(data["features"]), "--attributes",
         str(data["attributes_json"]), "--split", "test", "--metrics", "BLEU", "CIDEr", "--output",
         str(tmp_path / "evaluation")], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    scores = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert list(scores) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr"]
    assert scores["CIDEr"] == pytest.approx(summary_of(tmp_path / "straight")["test_metrics"]["CIDEr"], abs=1e-9)
    assert len(json.loads((tmp_path / "evaluation" / "captions.json").read_text())) == 8


def summary_of(output_dir):
    return json.loads((Path(output_dir) / "summary.json").read_text())


@pytest.mark.parametrize("name", ["coco_glied_xe", "coco_glied_scst", "coco_base_xe", "quickstart"])
def test_shipped_configs_are_valid(name):
    from modeling_glied import GLIEDConfig

    config = load_config(ROOT / "examples" / "configs" / f"{name}.yaml")
    model_config = GLIEDConfig(**config["model"])
    assert model_config.is_base_model == name.startswith("coco_base")
    assert config["train"]["stage"] == ("scst" if "scst" in name else "xe")


def test_config_overrides_and_errors(tmp_path):
    config = load_config(ROOT / "examples" / "configs" / "quickstart.yaml",
                         ["model.local_distilling=false", "train.learning_rate=1e-3", "train.epochs=3"])
    assert config["model"]["hidden_size"] == 128 and config["model"]["local_distilling"] is False
    assert config["train"]["learning_rate"] == pytest.approx(1e-3) and config["train"]["epochs"] == 3
    with pytest.raises(ValueError, match="unknown config.train key 'epoch'"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(ValueError, match="section.key=value"):
        load_config(None, ["train.epochs"])
