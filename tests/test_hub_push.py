"""Pushing GLIED to a Hub and loading it back: examples/push.py, push_to_hub, revisions, remote code, the card.

Every test runs against the `local_hub` fixture: a real Hub-compatible server on 127.0.0.1 (tests/hub_server.py).
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from without_glied import WITHOUT_GLIED
import torch
import yaml
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError
from transformers import pipeline

from modeling_glied import GLIEDConfig, GLIEDForCaptioning
from processing import GLIEDProcessor
from processing.model_card import build_model_card, variant_name
from test_pipeline import OPTIONS, one_thread, reference_captions, texts, tiny, tiny_model  # noqa: F401  (fixtures)

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_METRICS = {"BLEU-1": 0.8123, "BLEU-2": 0.7, "BLEU-3": 0.6, "BLEU-4": 0.5234, "METEOR": 0.31,
                "ROUGE-L": 0.6, "CIDEr": 1.234}
UPLOADED = {"model.safetensors", "config.json", "generation_config.json", "configuration_glied.py",
            "modeling_glied.py", "processor_config.json", "tokenizer.json", "tokenizer_config.json", "README.md"}


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO_ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def push_script():
    return load_example("push")


@pytest.fixture(scope="module")
def run_dir(tiny, tmp_path_factory):
    """A training run as examples/train.py leaves it: the model in best/, the run's config, summary and metrics."""
    run = tmp_path_factory.mktemp("run")
    shutil.copytree(tiny["model_dir"], run / "best")
    config = load_example("train").load_config(str(REPO_ROOT / "examples" / "configs" / "quickstart.yaml"))
    (run / "config.yaml.json").write_text(json.dumps(config))
    (run / "test_metrics.json").write_text(json.dumps(TEST_METRICS))
    (run / "summary.json").write_text(json.dumps({"stage": "xe", "global_step": 40, "epochs": 8,
                                                  "best_val_cider": 1.1, "test_metrics": TEST_METRICS}))
    return run


def test_push_script_uploads_model_processor_code_and_card_in_one_commit(local_hub, push_script, run_dir, tiny,
                                                                         capsys):
    commit = push_script.main(["--model-dir", str(run_dir / "best"), "--repo-id", "user/glied-tiny",
                               "--commit-message", "GLIED quick-start", "--license", "apache-2.0", "--private"])
    api = HfApi()
    assert api.model_info("user/glied-tiny").private is True
    assert UPLOADED <= set(api.list_repo_files("user/glied-tiny"))
    history = api.list_repo_commits("user/glied-tiny")
    assert [c.title for c in history] == ["GLIED quick-start", "initial commit"] and history[0].commit_id == commit.oid
    assert commit.commit_url in capsys.readouterr().out

    card = ModelCard.load("user/glied-tiny")  # parses the YAML front matter
    front_matter = yaml.safe_load(card.content.split("---")[1])
    assert front_matter["pipeline_tag"] == card.data.pipeline_tag == "image-to-text"
    assert front_matter["library_name"] == "transformers" and front_matter["license"] == "apache-2.0"
    assert {"image-captioning", "glied", "custom_code"} <= set(card.data.tags)
    assert card.data.datasets == ["quickstart"]
    scores = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert scores == {"BLEU-1": 81.23, "BLEU-2": 70.0, "BLEU-3": 60.0, "BLEU-4": 52.34, "METEOR": 31.0,
                      "ROUGE-L": 60.0, "CIDEr-D": 123.4}
    assert {result.task_type for result in card.data.eval_results} == {"image-to-text"}
    text = card.text
    assert "A **GLIED** image captioner" in text
    assert "| local cross-modal distilling (`local_distilling`) |" in text and "| on |" in text
    assert "**18.78M** parameters for GLIED and\n**11.43M** for Base" in text
    assert "| learning rate | 0.001 |" in text and "| CIDEr-D | 123.4 |" in text
    assert f"**{sum(p.numel() for p in tiny['model'].parameters()):,}**" in text  # the layout's total
    assert 'pipeline("image-to-text", model="user/glied-tiny")' in text
    assert '"detector": "components"' in text  # the region extractor the pipeline rebuilds
    local_hub.assert_clean()


def test_card_of_a_base_model_without_run_or_extractor(tiny, tmp_path):
    processor = GLIEDProcessor(tiny["processor"].tokenizer, region_feature_size=128)  # precomputed features only
    base = GLIEDForCaptioning(GLIEDConfig.base(vocab_size=len(processor.tokenizer), hidden_size=32,
                                               num_attention_heads=4, intermediate_size=64, region_feature_size=128))
    base.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    card = build_model_card(tmp_path / "base")
    parsed = ModelCard(card.content)  # the front matter parses
    assert parsed.data.pipeline_tag == "image-to-text" and parsed.data.eval_results is None
    assert "glied-base" in parsed.data.tags and "model-index" not in card.content
    text = parsed.text
    assert "A **Base** image captioner" in text and "| global visual distilling (`global_visual_distilling`) |" in text
    assert "trained on **precomputed features**" in text
    assert "No training record" in text and "No test metrics" in text
    total = sum(p.numel() for p in base.parameters())
    assert f"**{total:,}**" in text  # the layout adds up to the model's parameter count
    assert variant_name({"global_visual_distilling": True, "global_attribute_distilling": False,
                         "local_distilling": False}) == "GLIED ablation: global visual distilling"
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_model_card(tmp_path)


def test_pipeline_from_the_hub_and_older_revisions(local_hub, push_script, tiny, tmp_path):
    images = tiny["images"][:3]
    first = push_script.push(tiny["model_dir"], "user/glied-rev")
    old = reference_captions(tiny["model"], tiny["processor"], tiny["extractor"], images, **OPTIONS)
    assert texts(pipeline("image-to-text", model="user/glied-rev")(images, batch_size=3, **OPTIONS)) == \
        [[caption] for caption in old]

    retrained = tiny_model(tiny["processor"], seed=1)
    retrained.save_pretrained(tmp_path / "retrained")
    tiny["processor"].save_pretrained(tmp_path / "retrained")
    second = push_script.push(tmp_path / "retrained", "user/glied-rev", commit_message="retrained")
    new = reference_captions(retrained, tiny["processor"], tiny["extractor"], images, **OPTIONS)
    assert new != old
    assert texts(pipeline("image-to-text", model="user/glied-rev")(images, batch_size=3, **OPTIONS)) == \
        [[caption] for caption in new]

    at_first = pipeline("image-to-text", model="user/glied-rev", revision=first.oid)
    assert texts(at_first(images, batch_size=3, **OPTIONS)) == [[caption] for caption in old]
    loaded = GLIEDForCaptioning.from_pretrained("user/glied-rev", revision=first.oid)
    for name, value in tiny["model"].state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert HfApi().model_info("user/glied-rev").sha == second.oid

    # a branch: main stays as it is
    push_script.main(["--model-dir", str(tiny["model_dir"]), "--repo-id", "user/glied-rev", "--revision", "dev"])
    on_dev = pipeline("image-to-text", model="user/glied-rev", revision="dev")
    assert texts(on_dev(images, batch_size=3, **OPTIONS)) == [[caption] for caption in old]
    assert HfApi().model_info("user/glied-rev").sha == second.oid
    local_hub.assert_clean()


def test_model_and_processor_push_to_hub(local_hub, tiny):
    tiny["model"].push_to_hub("user/glied-direct")
    tiny["processor"].push_to_hub("user/glied-direct")
    assert UPLOADED - {"README.md"} <= set(HfApi().list_repo_files("user/glied-direct"))
    processor = GLIEDProcessor.from_pretrained("user/glied-direct")
    assert processor.tokenizer.get_vocab() == tiny["processor"].tokenizer.get_vocab()
    assert processor.region_extractor == tiny["processor"].region_extractor
    captioner = pipeline("image-to-text", model="user/glied-direct")
    expected = reference_captions(tiny["model"], tiny["processor"], tiny["extractor"], tiny["images"][:1], **OPTIONS)
    assert captioner(tiny["images"][0], **OPTIONS) == [{"generated_text": expected[0]}]


def test_clear_errors(local_hub, push_script, tiny, tmp_path):
    with pytest.raises(OSError, match="user/none") as error:
        GLIEDForCaptioning.from_pretrained("user/none")
    assert isinstance(error.value.__cause__, RepositoryNotFoundError)  # transformers wraps the hub's error
    with pytest.raises(RepositoryNotFoundError, match="user/none"):
        GLIEDProcessor.from_pretrained("user/none")
    with pytest.raises(OSError, match="user/none"):
        pipeline("image-to-text", model="user/none")

    HfApi().create_repo("user/empty")
    with pytest.raises(EntryNotFoundError, match="config.json"):
        hf_hub_download("user/empty", "config.json")
    with pytest.raises(OSError, match="does not appear to have a file named"):
        GLIEDForCaptioning.from_pretrained("user/empty")

    tiny["model"].push_to_hub("user/model-only")  # no processor
    with pytest.raises(OSError, match="nope is not a valid git identifier"):
        GLIEDForCaptioning.from_pretrained("user/model-only", revision="nope")
    with pytest.raises(ValueError, match="needs the model's GLIEDProcessor"):
        pipeline("image-to-text", model="user/model-only")

    with pytest.raises(FileNotFoundError, match="missing-model"):
        push_script.push(tmp_path / "missing-model", "user/never")
    tiny["model"].save_pretrained(tmp_path / "no-processor")
    with pytest.raises(FileNotFoundError, match="no processor_config.json"):
        push_script.push(tmp_path / "no-processor", "user/never")


@pytest.mark.slow
def test_trust_remote_code_in_a_fresh_process_without_glied(local_hub, push_script, tiny, tmp_path):
    push_script.push(tiny["model_dir"], "user/glied-remote")
    outputs = tiny["extractor"](tiny["images"][:2])
    inputs = tiny["processor"](region_features=[o["region_features"] for o in outputs],
                               region_boxes=[o["region_boxes"] for o in outputs],
                               attributes=[["red", "circle"], []])
    torch.save(dict(inputs), tmp_path / "inputs.pt")
    expected = tiny["model"].generate(**inputs, **OPTIONS)
    script = WITHOUT_GLIED + textwrap.dedent(f"""
        import json, torch, transformers
        model = transformers.AutoModelForImageTextToText.from_pretrained("user/glied-remote", trust_remote_code=True)
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        ids = model.generate(**inputs, num_beams={OPTIONS["num_beams"]}, max_new_tokens={OPTIONS["max_new_tokens"]})
        tokenizer = transformers.AutoTokenizer.from_pretrained("user/glied-remote", trust_remote_code=True)
        print(json.dumps({{"module": type(model).__module__, "ids": ids.tolist(),
                          "texts": tokenizer.batch_decode(ids, skip_special_tokens=True)}}))
    """)
    env = {key: value for key, value in local_hub.env.items() if key != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["module"].startswith("transformers_modules")
    assert result["ids"] == expected.tolist()
    # tokenizer.json alone decodes the ids (a generic tokenizer, GLIEDTokenizer being unknown there)
    assert result["texts"] == tiny["processor"].batch_decode(expected)
    assert os.path.isdir(Path(local_hub.env["HF_MODULES_CACHE"]))  # the code came from the repository
