"""The model card (the Hub README) of a GLIED checkpoint, filled from the checkpoint and the run that trained it.

    from processing.model_card import build_model_card
    card = build_model_card("outputs/quickstart/glied/best", repo_id="user/glied-quickstart")
    card.save("outputs/quickstart/glied/best/README.md")      # or card.push_to_hub(repo_id)

The template is `model_card.md` at the top of the source tree (Jinja2, rendered by `huggingface_hub.ModelCard`);
its YAML front matter (library, pipeline tag, tags, datasets, metrics and a `model-index` with the test results) is
built here with `huggingface_hub.ModelCardData`, so that the Hub can read it.

What it reads:
- the model folder: `config.json` (the GLIED switches, sizes), `processor_config.json` (limits, region extractor),
  `tokenizer.json` (vocabulary size);
- the training run, by default the folder above the model folder when it holds them (`examples/train.py` saves
  the model in `<output_dir>/best`): `config.yaml.json` (the run's configuration), `summary.json` and
  `test_metrics.json` (the test scores, pycocoevalcap values, shown x100 as papers do).

The parameter layout is counted on the meta device (no memory, no weights) for the checkpoint's own config and for
the paper's setting (d_model 512, 8 heads, feed-forward 2048, 10,000 words).
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "model_card.md"
PAPER = {
    "title": "Exploring and Distilling Cross-Modal Information for Image Captioning",
    "authors": "Fenglin Liu, Xuancheng Ren, Yuanxin Liu, Kai Lei, Xu Sun",
    "venue": "IJCAI 2019",
    "arxiv": "2002.12585",
    "parameters": {"GLIED": 18.3, "Base": 12.3},
}
PAPER_VOCABULARY = 10000
# key of test_metrics.json -> (Hub metric id, display name)
METRICS = {
    "BLEU-1": ("bleu", "BLEU-1"), "BLEU-2": ("bleu", "BLEU-2"), "BLEU-3": ("bleu", "BLEU-3"),
    "BLEU-4": ("bleu", "BLEU-4"), "METEOR": ("meteor", "METEOR"), "ROUGE-L": ("rouge", "ROUGE-L"),
    "CIDEr": ("cider", "CIDEr-D"), "SPICE": ("spice", "SPICE"),
}
DATASET_NAMES = {
    "coco": "COCO captions, Karpathy split",
    "flickr30k": "Flickr30k, Karpathy split",
    "flickr8k": "Flickr8k, Karpathy split",
    "quickstart": "glied quick-start scenes (generated shapes)",
}
SWITCHES = (
    ("global_visual_distilling", "global visual distilling", "I~ = G(H_vd(I, I, I), I)"),
    ("global_attribute_distilling", "global attribute distilling", "t~ = G(H_ad(x, A, A), x)"),
    ("local_distilling", "local cross-modal distilling", "c~ = G(H_vl(c_g, I, I) + H_al(c_g, A, A), c_g)"),
)
# parameter name part -> row of the layout table (LayerNorms of G go with the attention they follow)
_BLOCKS = (
    ("model.shared", "word embedding `E` (caption and attribute words)", "x, A"),
    ("model.encoder.region_embedding", "region embedding (projection + box geometry + LayerNorm)", "I"),
    ("model.encoder.layers", "global visual distilling `H_vd` + its FFN", "I~ = G(H_vd(I, I, I), I)"),
    (".attribute_distilling", "global attribute distilling `H_ad`", "t~ = G(H_ad(x, A, A), x)"),
    (".context_", "context attention `H_x`", "x~ = G(H_x(t~, T~, T~), t~)"),
    (".local_", "local cross-modal distilling `H_vl`, `H_al`", "c~ = G(H_vl(c_g, I, I) + H_al(c_g, A, A), c_g)"),
    (".visual_attention", "visual attention `H_v` (+ the `G` of the aspect vector)", "H_v(x~, I~, I~)"),
    (".aspect_shortcut", "visual attention `H_v` (+ the `G` of the aspect vector)", ""),
    (".aspect_feed_forward", "FFN after the global aspect vector `c_g`", "G(W_2 ReLU(W_1 h), h)"),
    (".semantic_attention", "semantic attention `H_a` (Base)", "c = G(H_v(x~, I, I) + H_a(x~, A, A), x~)"),
    (".feed_forward", "FFN after the (local) aspect vector", "G(W_2 ReLU(W_1 h), h)"),
    ("lm_head", "word selection `W_c` (tied to `E`: no parameters of its own)", "y ~ softmax(W_c c~)"),
)


def _read_json(path):
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def variant_name(config) -> str:
    """"GLIED" (every part on), "Base" (every part off) or "GLIED ablation: <the parts that are on>"."""
    on = [label for key, label, _ in SWITCHES if config.get(key, True)]
    if len(on) == len(SWITCHES):
        return "GLIED"
    if not on:
        return "Base"
    return "GLIED ablation: " + " + ".join(on)


def parameter_layout(config_dict):
    """Rows `{block, formula, parameters}` of a GLIEDForCaptioning with this config (counted on the meta device),
    and the total (tied weights counted once)."""
    import torch

    from modeling_glied import GLIEDConfig, GLIEDForCaptioning

    config = GLIEDConfig(**{k: v for k, v in config_dict.items() if k not in ("architectures", "auto_map")})
    with torch.device("meta"):
        model = GLIEDForCaptioning(config)
    rows, seen = {}, set()
    for name, parameter in model.named_parameters():  # tied parameters appear once
        seen.add(id(parameter))
        block, formula = next(((b, f) for part, b, f in _BLOCKS if part in name), ("other", ""))
        if ".layers." in name:  # e.g. "decoder layer 0: context attention `H_x`"
            side = "encoder" if ".encoder." in name else "decoder"
            block = f"{side} layer {name.split('.layers.')[1].split('.')[0]}: {block}"
        row = rows.setdefault(block, {"block": block, "formula": formula, "parameters": 0})
        row["formula"] = row["formula"] or formula
        row["parameters"] += parameter.numel()
    if config.tie_word_embeddings:
        _, block, formula = _BLOCKS[-1]
        rows[block] = {"block": block, "formula": formula, "parameters": 0}
    total = sum(row["parameters"] for row in rows.values())
    return list(rows.values()), total


def paper_setting_counts():
    """Parameters (millions) of GLIED and Base at the paper's setting with a 10,000-word vocabulary."""
    from modeling_glied import GLIEDConfig

    counts = {}
    for name, config in (("GLIED", GLIEDConfig(vocab_size=PAPER_VOCABULARY)),
                         ("Base", GLIEDConfig.base(vocab_size=PAPER_VOCABULARY))):
        counts[name] = round(parameter_layout(config.to_dict())[1] / 1e6, 2)
    return counts


def find_run_dir(model_dir):
    """The training run of a model folder: the folder itself or its parent, whichever holds the run's files."""
    model_dir = Path(model_dir)
    for candidate in (model_dir, model_dir.parent):
        if any((candidate / name).is_file() for name in ("summary.json", "test_metrics.json", "config.yaml.json")):
            return candidate
    return None


def _dataset_key(run_config):
    captions = ((run_config or {}).get("data") or {}).get("captions")
    if not captions:
        return None
    stem = Path(str(captions)).stem
    return stem[len("dataset_"):] if stem.startswith("dataset_") else stem


def _training_section(run_config, summary, model_config):
    if run_config is None and summary is None:
        return None
    run_config = run_config or {}
    train = run_config.get("train") or {}
    rows = []

    def add(label, value):
        if value not in (None, "", {}):
            rows.append({"setting": label, "value": value})

    add("stage", {"xe": "cross-entropy", "scst": "self-critical sequence training (CIDEr-D reward)"}.get(
        train.get("stage"), train.get("stage")))
    add("captions", ((run_config.get("data") or {}).get("captions")))
    add("region features", ((run_config.get("data") or {}).get("features")))
    add("attribute words", ((run_config.get("data") or {}).get("attributes")))
    add("epochs", train.get("epochs"))
    add("batch (images x captions per image)",
        f"{train['batch_size']} x {train['captions_per_image']}" if "batch_size" in train else None)
    add("optimizer", "Adam (0.9, 0.98), eps 1e-9" if train else None)
    add("learning rate", train.get("learning_rate"))
    add("schedule", f"{train['scheduler']}, {train.get('warmup_steps', 0)} warm-up steps" if "scheduler" in train
        else None)
    add("gradient clipping", train.get("max_grad_norm"))
    add("label smoothing", model_config.get("label_smoothing"))
    add("dropout", model_config.get("hidden_dropout_prob"))
    add("mixed precision", train.get("mixed_precision"))
    if train.get("stage") == "scst":
        scst = run_config.get("scst") or {}
        add("SCST samples per image", scst.get("num_samples"))
        add("SCST baseline", scst.get("baseline"))
    evaluation = run_config.get("evaluation") or {}
    add("evaluation decoding", f"beam {evaluation['num_beams']}, at most {evaluation['max_new_tokens']} words"
        if "num_beams" in evaluation else None)
    summary = summary or {}
    add("steps trained", summary.get("global_step"))
    if summary.get("best_val_cider") is not None:
        add("best validation CIDEr-D", f"{100 * summary['best_val_cider']:.1f}")
    add("seed", run_config.get("seed"))
    return {"rows": rows, "config_json": json.dumps(run_config, indent=2, sort_keys=True) if run_config else None}


def model_card_context(model_dir, run_dir=None, repo_id=None):
    """Everything the template needs, from the model folder (and the run folder, found if not given)."""
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    if config is None:
        raise FileNotFoundError(f"no config.json in {model_dir}: not a saved GLIED model folder")
    if config.get("model_type") != "glied":
        raise ValueError(f"{model_dir}/config.json is a {config.get('model_type')!r} model, not a GLIED captioner")
    processor = _read_json(model_dir / "processor_config.json")
    if processor is None:
        raise FileNotFoundError(f"no processor_config.json in {model_dir}: save the GLIEDProcessor with the model "
                                f"(processor.save_pretrained) so that the pipeline can caption with it")
    tokenizer = _read_json(model_dir / "tokenizer.json") or {}
    run_dir = Path(run_dir) if run_dir is not None else find_run_dir(model_dir)
    run_config = summary = metrics = None
    if run_dir is not None:
        run_config = _read_json(run_dir / "config.yaml.json")
        summary = _read_json(run_dir / "summary.json")
        metrics = _read_json(run_dir / "test_metrics.json") or (summary or {}).get("test_metrics")
    layout, total = parameter_layout(config)
    dataset = _dataset_key(run_config)
    split = ((run_config or {}).get("data") or {}).get("test_split") or "test"
    results = [{"metric": METRICS.get(key, (key.lower(), key))[1], "key": key, "value": round(100 * value, 2)}
               for key, value in (metrics or {}).items() if isinstance(value, (int, float))]
    return {
        "model_name": repo_id or model_dir.resolve().name,
        "model_id": repo_id or str(model_dir),
        "paper": PAPER,
        "variant": variant_name(config),
        "switches": [{"part": label, "formula": formula, "on": bool(config.get(key, True)), "key": key}
                     for key, label, formula in SWITCHES],
        "config": config,
        "layout": [{**row, "parameters": f"{row['parameters']:,}"} for row in layout],
        "total_parameters": f"{total:,}",
        "total_millions": f"{total / 1e6:.2f}",
        "paper_setting": paper_setting_counts(),
        "paper_vocabulary": f"{PAPER_VOCABULARY:,}",
        "processor": processor,
        "vocabulary_size": len((tokenizer.get("model") or {}).get("vocab") or {}) or config.get("vocab_size"),
        "region_extractor": processor.get("region_extractor"),
        "training": _training_section(run_config, summary, config),
        "dataset": dataset,
        "dataset_name": DATASET_NAMES.get(dataset, dataset),
        "test_split": split,
        "results": results,
    }


def card_data(context, license=None, extra_tags=()):
    """The YAML front matter: library, pipeline tag, tags, datasets, metrics and the model-index of the results."""
    results = context["results"]
    eval_results = [
        EvalResult(task_type="image-to-text", task_name="Image Captioning", dataset_type=context["dataset"],
                   dataset_name=context["dataset_name"], dataset_split=context["test_split"],
                   metric_type=METRICS.get(result["key"], (result["key"].lower(), None))[0],
                   metric_name=result["metric"], metric_value=result["value"])
        for result in results
    ] if context["dataset"] else []
    variant_tag = "glied-base" if context["variant"] == "Base" else "glied"
    tags = ["image-captioning", "glied", variant_tag, "region-features", "custom_code", *extra_tags]
    return ModelCardData(
        language="en",
        license=license,
        library_name="transformers",
        pipeline_tag="image-to-text",
        tags=list(dict.fromkeys(tags)),
        datasets=[context["dataset"]] if context["dataset"] else None,
        metrics=list(dict.fromkeys(METRICS.get(r["key"], (r["key"].lower(),))[0] for r in results)) or None,
        model_name=context["model_name"],
        eval_results=eval_results or None,
    )


def build_model_card(model_dir, run_dir=None, repo_id=None, license=None, template_path=None) -> ModelCard:
    """The filled model card of a saved GLIED folder (see the module docstring)."""
    template_path = Path(template_path) if template_path is not None else TEMPLATE_PATH
    if not template_path.is_file():
        raise FileNotFoundError(f"model card template not found: {template_path} (pass template_path=...)")
    context = model_card_context(model_dir, run_dir=run_dir, repo_id=repo_id)
    return ModelCard.from_template(card_data(context, license=license), template_path=str(template_path), **context)


__all__ = ["TEMPLATE_PATH", "build_model_card", "card_data", "find_run_dir", "model_card_context",
           "paper_setting_counts", "parameter_layout", "variant_name"]
