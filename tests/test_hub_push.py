"""Pushing GLIED and HM-LSTM to a Hub and loading them back: examples/push.py, push_to_hub, revisions, remote code,
the cards.

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
from types import SimpleNamespace

import numpy as np
import pytest
from without_glied import WITHOUT_GLIED
import torch
import yaml
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError
from transformers import AutoModel, AutoProcessor, pipeline

from modeling_glied import GLIEDConfig, GLIEDForCaptioning, HMLSTMConfig, HMLSTMModel
from processing import GLIEDProcessor, HMLSTMProcessor
from processing.model_card import build_model_card, variant_name
from processing.retrieval_evaluation import FLAT_MODEL_NOTE, phrase_query_metrics, retrieval_results
from test_pipeline import OPTIONS, one_thread, reference_captions, texts, tiny, tiny_model  # noqa: F401  (fixtures)

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_METRICS = {"BLEU-1": 0.8123, "BLEU-2": 0.7, "BLEU-3": 0.6, "BLEU-4": 0.5234, "METEOR": 0.31,
                "ROUGE-L": 0.6, "CIDEr": 1.234}
UPLOADED = {"model.safetensors", "config.json", "generation_config.json", "configuration_glied.py",
            "modeling_glied.py", "config_checks.py", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
            "README.md"}
HMLSTM_UPLOADED = {"model.safetensors", "config.json", "modeling_hmlstm.py", "config_checks.py",
                   "processor_config.json", "tokenizer.json", "tokenizer_config.json", "README.md"}
SHAPES = ["a red circle", "a blue star next to a green square", "two yellow triangles on the left",
          "a small red square above a large blue circle", "a green star"]


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



# ---------------------------------------------------------------------------------------------------------------
# HM-LSTM: the retrieval model
# ---------------------------------------------------------------------------------------------------------------
def save_hmlstm(folder, hierarchical=True, seed=0):
    """A tiny random HM-LSTM and its processor (rule phrases), saved into `folder`."""
    processor = HMLSTMProcessor.from_captions(SHAPES, count_threshold=0, region_feature_size=6, max_regions=4,
                                              max_sentence_length=12, phrase_backend="rules")
    torch.manual_seed(seed)
    model = HMLSTMModel(HMLSTMConfig(vocab_size=len(processor.tokenizer), word_embedding_size=8, hidden_size=8,
                                     embedding_size=8, region_feature_size=6, hierarchical=hierarchical,
                                     margin=0.2, phrase_loss_weight=0.3)).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


def retrieval_test_metrics(hierarchical=True):
    """test_metrics.json as examples/train_retrieval.py writes it: `evaluate_retrieval`'s result, its parts made by
    the functions that make them (20 images, 5 sentences each; 6 phrase queries, the last 2 novel)."""
    generator = np.random.default_rng(0)
    images = generator.standard_normal((20, 8))
    owner = np.repeat(np.arange(20), 5)
    embeddings = SimpleNamespace(image_ids=[str(i) for i in range(20)], image_embeds=images, sentence_image=owner,
                                 sentence_embeds=images[owner] + 1.5 * generator.standard_normal((100, 8)))
    scores = generator.standard_normal((6, 20))
    relevant = [[0, 3], [1], [2, 5, 7], [4], [6, 8], [9]]
    queries = {"scoring": "phrase" if hierarchical else "sentence", "all": phrase_query_metrics(scores, relevant),
               "seen": phrase_query_metrics(scores[:4], relevant[:4]),
               "novel": phrase_query_metrics(scores[4:], relevant[4:]), "skipped": 0}
    grounding = {"available": False, "reason": FLAT_MODEL_NOTE}
    if hierarchical:
        grounding = {"phrases": "annotated", "multiple_boxes": "any", "iou_threshold": 0.5, "annotated": 40,
                     "unaligned": 0, "truncated": 1, "overlapping": 1, "unmatched": 0, "shared": 0, "scored": 38,
                     "accuracy": 16 / 38, "upper_bound": 34 / 38}
    return {"model": {"hierarchical": hierarchical}, "retrieval": retrieval_results(embeddings, "full"),
            "grounding": grounding, "phrase_queries": queries}


def write_retrieval_run(run, metrics):
    """The files examples/train_retrieval.py leaves next to best/ (its config as load_config merges it)."""
    config = yaml.safe_load((REPO_ROOT / "examples" / "configs" / "quickstart_hmlstm.yaml").read_text())
    config["data"].update(captions="data/dataset_flickr30k.json", features="features/flickr30k", test_split="test")
    config["train"].update(optimizer="adam", adam_epsilon=1e-8, mixed_precision="no")
    (run / "config.yaml.json").write_text(json.dumps(config))
    (run / "test_metrics.json").write_text(json.dumps(metrics))
    (run / "summary.json").write_text(json.dumps({"stage": "train", "global_step": 24, "epochs": 8,
                                                  "best_val_rsum": 123.4, "test_metrics": metrics}))


@pytest.fixture(scope="module")
def hmlstm_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("hmlstm-run")
    model, processor = save_hmlstm(run / "best")
    metrics = retrieval_test_metrics()
    write_retrieval_run(run, metrics)
    generator = np.random.default_rng(1)
    raw = {"region_features": [generator.standard_normal((n, 6)).astype(np.float32) for n in (2, 4, 3)],
           "region_boxes": [np.sort(generator.uniform(size=(n, 2, 2)), axis=1).reshape(n, 4) for n in (2, 4, 3)]}
    images = processor(**raw)
    sentences = processor(sentences=SHAPES[:4] + ["a purple circle next to a red star"])
    with torch.no_grad():
        expected = {"images": model.embed_images(**images), "sentences": model.embed_sentences(**sentences)}
    return {"run": run, "model": model, "processor": processor, "metrics": metrics, "raw": raw, "images": images,
            "sentences": sentences, "expected": expected}


def _row(*cells):
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def test_push_script_uploads_an_hmlstm_model_with_its_code_processor_and_card(local_hub, push_script, hmlstm_run):
    commit = push_script.main(["--model-dir", str(hmlstm_run["run"] / "best"), "--repo-id", "user/hmlstm-tiny",
                               "--license", "mit"])
    api = HfApi()
    files = set(api.list_repo_files("user/hmlstm-tiny"))
    assert HMLSTM_UPLOADED <= files
    assert not files & {"generation_config.json", "configuration_glied.py", "modeling_glied.py"}
    history = api.list_repo_commits("user/hmlstm-tiny")
    assert [c.title for c in history] == ["Upload HM-LSTM model from best", "initial commit"]
    assert history[0].commit_id == commit.oid
    config = json.loads(Path(hf_hub_download("user/hmlstm-tiny", "config.json")).read_text())
    assert config["model_type"] == "hmlstm" and config["auto_map"] == {
        "AutoConfig": "modeling_hmlstm.HMLSTMConfig", "AutoModel": "modeling_hmlstm.HMLSTMModel"}
    saved = json.loads(Path(hf_hub_download("user/hmlstm-tiny", "processor_config.json")).read_text())
    assert saved["processor_class"] == "HMLSTMProcessor" and saved["phrase_info"] == {"backend": "rules"}

    card = ModelCard.load("user/hmlstm-tiny")
    front_matter = yaml.safe_load(card.content.split("---")[1])
    assert front_matter["library_name"] == "transformers" and front_matter["license"] == "mit"
    assert "pipeline_tag" not in front_matter  # no transformers pipeline serves the joint embedding
    assert {"image-text-retrieval", "hm-lstm", "hierarchical", "custom_code"} <= set(card.data.tags)
    assert card.data.datasets == ["flickr30k"]
    retrieval = hmlstm_run["metrics"]["retrieval"]["full"]
    scores = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert scores["image annotation R@1 (full)"] == round(retrieval["annotation"]["r1"], 2)
    assert scores["image search R@10 (full)"] == round(retrieval["search"]["r10"], 2)
    assert scores["accuracy (IoU >= 0.5)"] == round(100 * 16 / 38, 2) and len(scores) == 7
    text = card.text
    assert "the **hierarchical** model" in text and "*Hierarchical Multimodal LSTM for Dense Visual-Semantic " \
        "Embedding* (Zhenxing Niu" in text and "ICCV 2017" in text
    cells = [f"{retrieval[d][k]:.1f}" for d in ("annotation", "search") for k in ("r1", "r5", "r10", "medr")]
    assert _row("all the test images", *cells, f"{retrieval['rsum']:.1f}") in text  # the R@K table
    assert "100 sentences" in text
    assert "accuracy **42.1 %** on 38 of 40\nannotated phrases" in text and "89.5 %" in text  # grounding
    novel = hmlstm_run["metrics"]["phrase_queries"]["novel"]
    assert _row("never in a training caption", 2, *(f"{novel[k]:.1f}" for k in ("r1", "r5", "r10", "medr", "p@10",
                                                                                "map"))) in text
    ours = " / ".join(f"{retrieval[d][k]:.1f}" for d in ("annotation", "search") for k in ("r1", "r10"))
    assert _row("Flickr30K (1,000 test images)", 38.1, 76.5, 27.7, 68.8, ours) in text  # beside the paper's
    assert _row("COCO 1K (average over the 1,000-image folds)", 43.9, 87.8, 36.1, 86.7, "not measured") in text
    assert "rule chunker of `processing/phrases.py`" in text and "trained on **precomputed features**" in text
    assert "| best validation R-sum | 123.4 |" in text and "| learning rate | 0.002 |" in text
    assert "| loss | bidirectional hinge ranking, margin 0.2, summed over the negatives (VSE); + 0.3 x" in text
    assert f"**{sum(p.numel() for p in hmlstm_run['model'].parameters()):,}**" in text  # the layout's total
    assert 'AutoModel.from_pretrained("user/hmlstm-tiny", trust_remote_code=True)' in text
    assert "{{" not in text and "{%" not in text

    # back from the Hub with the Auto classes, as the card's "How to use" does: the same embeddings
    model = AutoModel.from_pretrained("user/hmlstm-tiny").eval()
    processor = AutoProcessor.from_pretrained("user/hmlstm-tiny")
    assert isinstance(model, HMLSTMModel) and isinstance(processor, HMLSTMProcessor)
    assert processor.phrases(SHAPES[1]) == hmlstm_run["processor"].phrases(SHAPES[1])
    with torch.no_grad():
        images = model.embed_images(**processor(**hmlstm_run["raw"]))
        sentences = model.embed_sentences(**processor(sentences=SHAPES[:4] + ["a purple circle next to a red star"]))
    for got, expected in zip((*images, *sentences), (*hmlstm_run["expected"]["images"],
                                                     *hmlstm_run["expected"]["sentences"])):
        assert torch.equal(got, expected)
    local_hub.assert_clean()


def test_card_of_a_flat_hmlstm_with_and_without_test_metrics(tmp_path):
    model, _ = save_hmlstm(tmp_path / "run" / "best", hierarchical=False)
    text = build_model_card(tmp_path / "run" / "best").text  # no run files yet
    assert "the **flat baseline** model" in text and "`config.hierarchical` = False" in text
    assert "No training record" in text and "No test metrics" in text and "not measured" in text
    assert "Regions and phrases meet" not in text  # the hierarchical model's limitations
    assert "phrase_lstm" not in text and f"**{sum(p.numel() for p in model.parameters()):,}**" in text

    write_retrieval_run(tmp_path / "run", retrieval_test_metrics(hierarchical=False))
    card = build_model_card(tmp_path / "run" / "best", repo_id="user/flat")
    assert "flat-baseline" in card.data.tags and "hierarchical" not in card.data.tags
    assert {result.task_type for result in card.data.eval_results} == {"image-text-retrieval"}  # no grounding
    assert f"**Region-phrase grounding**: not available ({FLAT_MODEL_NOTE})." in card.text
    assert "the sentence embedding's cosine with the image" in card.text


@pytest.mark.slow
def test_hmlstm_loads_with_trust_remote_code_in_a_fresh_process_without_glied(local_hub, push_script, hmlstm_run,
                                                                              tmp_path):
    push_script.push(hmlstm_run["run"] / "best", "user/hmlstm-remote")
    torch.save({"images": dict(hmlstm_run["images"]), "sentences": dict(hmlstm_run["sentences"])},
               tmp_path / "inputs.pt")
    script = WITHOUT_GLIED + textwrap.dedent(f"""
        import torch, transformers
        model = transformers.AutoModel.from_pretrained("user/hmlstm-remote", trust_remote_code=True).eval()
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            images = model.embed_images(**inputs["images"])
            sentences = model.embed_sentences(**inputs["sentences"])
        tokenizer = transformers.AutoTokenizer.from_pretrained("user/hmlstm-remote", trust_remote_code=True)
        words = tokenizer({SHAPES[:4] + ["a purple circle next to a red star"]!r}, padding=True, return_tensors="pt")
        torch.save({{"module": type(model).__module__, "images": images, "sentences": sentences,
                    "words": dict(words)}}, {str(tmp_path / "outputs.pt")!r})
    """)
    env = {key: value for key, value in local_hub.env.items() if key != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = torch.load(tmp_path / "outputs.pt")
    assert result["module"].startswith("transformers_modules")  # modeling_hmlstm.py from the repository
    for got, expected in zip((*result["images"], *result["sentences"]), (*hmlstm_run["expected"]["images"],
                                                                         *hmlstm_run["expected"]["sentences"])):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # tokenizer.json alone gives the processor's words (what the card tells users without glied)
    assert torch.equal(result["words"]["input_ids"], hmlstm_run["sentences"]["input_ids"])
    assert torch.equal(result["words"]["attention_mask"], hmlstm_run["sentences"]["attention_mask"])


def test_push_refuses_folders_that_are_neither_glied_nor_hmlstm(local_hub, push_script, hmlstm_run, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(ValueError, match="'bert' model; model cards and uploads know the model types 'glied'"):
        push_script.push(other, "user/never")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        push_script.push(tmp_path, "user/never")
    with pytest.raises(RepositoryNotFoundError):  # refused before anything was created
        HfApi().model_info("user/never")

    HMLSTMModel(HMLSTMConfig(vocab_size=12, word_embedding_size=4, hidden_size=4, embedding_size=4,
                             region_feature_size=6)).save_pretrained(tmp_path / "no-processor")
    with pytest.raises(FileNotFoundError, match="no processor_config.json .* save the HMLSTMProcessor"):
        push_script.push(tmp_path / "no-processor", "user/never")
    # an HM-LSTM model with a GLIED run's test scores (and the other way round): the wrong run
    (tmp_path / "test_metrics.json").write_text(json.dumps(TEST_METRICS))
    with pytest.raises(ValueError, match="no image-sentence retrieval results"):
        build_model_card(hmlstm_run["run"] / "best", run_dir=tmp_path)
    processor = GLIEDProcessor.from_captions(SHAPES, count_threshold=0, region_feature_size=6)
    GLIEDForCaptioning(GLIEDConfig(vocab_size=len(processor.tokenizer), hidden_size=8, num_attention_heads=2,
                                   intermediate_size=16, region_feature_size=6)).save_pretrained(tmp_path / "glied")
    processor.save_pretrained(tmp_path / "glied")
    with pytest.raises(ValueError, match="retrieval results, not caption scores"):
        build_model_card(tmp_path / "glied", run_dir=hmlstm_run["run"])
    processor.save_pretrained(tmp_path / "no-processor")  # a GLIED processor beside an HM-LSTM model
    with pytest.raises(ValueError, match="is a GLIEDProcessor's, but an HM-LSTM retrieval model takes its "
                                         "HMLSTMProcessor"):
        push_script.push(tmp_path / "no-processor", "user/never")
