"""The model card (the Hub README) of a saved glied model, filled from the checkpoint and the run that trained it:
a GLIED captioner (`model_type` "glied") or an HM-LSTM retrieval model ("hmlstm").

    from processing.model_card import build_model_card
    card = build_model_card("outputs/quickstart/glied/best", repo_id="user/glied-quickstart")
    card.save("outputs/quickstart/glied/best/README.md")      # or card.push_to_hub(repo_id)

One mechanism for both: `model_card_context` reads the folder and the run into a dict, `card_data` builds the YAML
front matter (library, pipeline tag, tags, datasets, metrics and a `model-index` with the test results) with
`huggingface_hub.ModelCardData`, and `huggingface_hub.ModelCard.from_template` renders the model type's Jinja2
template (`TEMPLATES`: `model_card.md` for GLIED, `model_card_hmlstm.md` for HM-LSTM). The templates are read from
the top of the source tree, not from the installed package.

What it reads:
- the model folder: `config.json` (the model type, its switches and sizes), `processor_config.json` (limits,
  region extractor; HM-LSTM: the phrase parser), `tokenizer.json` (vocabulary size);
- the training run, by default the folder above the model folder when it holds them (`examples/train.py` and
  `examples/train_retrieval.py` save the model in `<output_dir>/best`): `config.yaml.json` (the run's
  configuration), `summary.json` (the best validation score) and `test_metrics.json`: for GLIED pycocoevalcap
  values (shown x100 as papers do), for HM-LSTM the result of `processing.retrieval_evaluation.evaluate_retrieval`
  (image annotation and search R@K, region-phrase grounding, phrase queries).

The parameter layout is counted on the meta device (no memory, no weights) for the checkpoint's own config, and for
GLIED also for the paper's setting (d_model 512, 8 heads, feed-forward 2048, 10,000 words).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, NamedTuple

from huggingface_hub import EvalResult, ModelCard, ModelCardData

_SOURCE_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_PATH = _SOURCE_ROOT / "model_card.md"  # GLIED's
PAPER = {
    "title": "Exploring and Distilling Cross-Modal Information for Image Captioning",
    "authors": "Fenglin Liu, Xuancheng Ren, Yuanxin Liu, Kai Lei, Xu Sun",
    "venue": "IJCAI 2019",
    "arxiv": "2002.12585",
    "parameters": {"GLIED": 18.3, "Base": 12.3},
}
HMLSTM_PAPER = {
    "title": "Hierarchical Multimodal LSTM for Dense Visual-Semantic Embedding",
    "authors": "Zhenxing Niu, Mo Zhou, Le Wang, Xinbo Gao, Gang Hua",
    "venue": "ICCV 2017",
    # R@1 / R@10 the paper reports; `protocol` is the key of `retrieval_results` that measures the same
    "results": (
        {"datasets": ("flickr30k", "flickr30k_entities"), "name": "Flickr30K (1,000 test images)", "protocol": "full",
         "annotation": (38.1, 76.5), "search": (27.7, 68.8)},
        {"datasets": ("coco",), "name": "COCO 1K (average over the 1,000-image folds)", "protocol": "1k",
         "annotation": (43.9, 87.8), "search": (36.1, 86.7)},
    ),
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
    "flickr30k_entities": "Flickr30k, Karpathy split, with the phrase boxes of Flickr30K Entities",
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
# HMLSTMModel's top-level modules -> row of the layout table (the formulas of modeling_hmlstm.py)
_HMLSTM_BLOCKS = {
    "word_embeddings": ("word embedding `E`", "x_t = E w_t"),
    "word_lstm": ("bidirectional word LSTM", "h_t = [LSTM_fwd(x_1..x_t); LSTM_bwd(x_t..x_T)]"),
    "phrase_lstm": ("phrase LSTM (hierarchical)", "n_p = last state of LSTM_p(h_s .. h_{e-1})"),
    "phrase_projection": ("phrase embedding `W_p` (hierarchical)", "p = normalize(W_p n_p)"),
    "sentence_lstm": ("root LSTM over the sentence's children", "r = last state of LSTM_root(children)"),
    "sentence_projection": ("sentence embedding `W_s`", "s = normalize(W_s r)"),
    "region_projection": ("region projection `W_r`", "u_i = W_r x_i + W_b g(box_i)"),
    "box_projection": ("box geometry projection `W_b`", "g(box) = x1, y1, x2, y2 (, area)"),
    "region_attention": ("attention pooling over the regions", "a = softmax_i(w . tanh(U u_i))"),
    "image_projection": ("image embedding `W_v`", "v = normalize(W_v sum_i a_i u_i)"),
}
_PROTOCOL_NAMES = {"1k": "1K (average over the 1,000-image folds)", "5k": "5K (all 5,000 images)",
                   "full": "all the test images"}
_PHRASE_QUERY_GROUPS = {"all": "all queries", "seen": "seen in training", "novel": "never in a training caption"}


def _read_json(path):
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def _percent(value):
    return None if value is None else f"{value:.1f}"


def variant_name(config) -> str:
    """"GLIED" (every part on), "Base" (every part off) or "GLIED ablation: <the parts that are on>"."""
    on = [label for key, label, _ in SWITCHES if config.get(key, True)]
    if len(on) == len(SWITCHES):
        return "GLIED"
    if not on:
        return "Base"
    return "GLIED ablation: " + " + ".join(on)


def _meta_model(config_class, model_class, config_dict):
    """A model of this config on the meta device (no memory, no weights), to count its parameters."""
    import torch

    config = config_class(**{k: v for k, v in config_dict.items() if k not in ("architectures", "auto_map")})
    with torch.device("meta"):
        return model_class(config)


def parameter_layout(config_dict):
    """Rows `{block, formula, parameters}` of a GLIEDForCaptioning with this config (counted on the meta device),
    and the total (tied weights counted once)."""
    from modeling_glied import GLIEDConfig, GLIEDForCaptioning

    model = _meta_model(GLIEDConfig, GLIEDForCaptioning, config_dict)
    rows = {}
    for name, parameter in model.named_parameters():  # tied parameters appear once
        block, formula = next(((b, f) for part, b, f in _BLOCKS if part in name), ("other", ""))
        if ".layers." in name:  # e.g. "decoder layer 0: context attention `H_x`"
            side = "encoder" if ".encoder." in name else "decoder"
            block = f"{side} layer {name.split('.layers.')[1].split('.')[0]}: {block}"
        row = rows.setdefault(block, {"block": block, "formula": formula, "parameters": 0})
        row["formula"] = row["formula"] or formula
        row["parameters"] += parameter.numel()
    if model.config.tie_word_embeddings:
        _, block, formula = _BLOCKS[-1]
        rows[block] = {"block": block, "formula": formula, "parameters": 0}
    total = sum(row["parameters"] for row in rows.values())
    return list(rows.values()), total


def hmlstm_parameter_layout(config_dict):
    """Rows `{block, formula, parameters}` of an HMLSTMModel with this config, one per module (counted on the meta
    device), and the total."""
    from modeling_glied import HMLSTMConfig, HMLSTMModel

    model = _meta_model(HMLSTMConfig, HMLSTMModel, config_dict)
    rows = {}
    for name, parameter in model.named_parameters():
        part = name.split(".")[0]
        block, formula = _HMLSTM_BLOCKS.get(part, (part, ""))
        row = rows.setdefault(part, {"block": block, "formula": formula, "parameters": 0})
        row["parameters"] += parameter.numel()
    return list(rows.values()), sum(row["parameters"] for row in rows.values())


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


def _optimizer(train):
    """The optimizer of examples/train.py's `build_optimizer`, in words."""
    name = train.get("optimizer", "adam")
    if name == "sgd":
        text = "SGD, momentum 0.9"
    else:
        text = f"{'AdamW' if name == 'adamw' else 'Adam'} (0.9, 0.98), eps {train.get('adam_epsilon', 1e-9):g}"
    return text + (f", weight decay {train['weight_decay']:g}" if train.get("weight_decay") else "")


def _ranking_loss(config):
    """HM-LSTM's training objective in words (None for a model without a ranking loss)."""
    if "margin" not in config:
        return None
    negatives = "the hardest negative (VSE++)" if config.get("hardest_negative") else "summed over the negatives (VSE)"
    text = f"bidirectional hinge ranking, margin {config['margin']}, {negatives}"
    if config.get("hierarchical", True):
        text += f"; + {config.get('phrase_loss_weight', 1.0)} x the phrase-image ranking loss"
    return text


def _training_section(run_config, summary, model_config):
    if run_config is None and summary is None:
        return None
    run_config = run_config or {}
    train, data = run_config.get("train") or {}, run_config.get("data") or {}
    rows = []

    def add(label, value):
        if value not in (None, "", {}):
            rows.append({"setting": label, "value": value})

    add("stage", {"xe": "cross-entropy", "scst": "self-critical sequence training (CIDEr-D reward)"}.get(
        train.get("stage"), train.get("stage")))
    add("captions", data.get("captions"))
    add("region features", data.get("features"))
    add("attribute words", data.get("attributes"))
    add("epochs", train.get("epochs"))
    add("batch (images x captions per image)",
        f"{train['batch_size']} x {train['captions_per_image']}" if "batch_size" in train else None)
    add("optimizer", _optimizer(train) if train else None)
    add("learning rate", train.get("learning_rate"))
    add("schedule", f"{train['scheduler']}, {train.get('warmup_steps', 0)} warm-up steps" if "scheduler" in train
        else None)
    add("gradient clipping", train.get("max_grad_norm"))
    add("label smoothing", model_config.get("label_smoothing"))
    add("loss", _ranking_loss(model_config))
    add("dropout", model_config.get("hidden_dropout_prob", model_config.get("dropout")))
    add("mixed precision", train.get("mixed_precision"))
    if train.get("stage") == "scst":
        scst = run_config.get("scst") or {}
        add("SCST samples per image", scst.get("num_samples"))
        add("SCST baseline", scst.get("baseline"))
    evaluation = run_config.get("evaluation") or {}
    add("evaluation decoding", f"beam {evaluation['num_beams']}, at most {evaluation['max_new_tokens']} words"
        if "num_beams" in evaluation else None)
    add("evaluation protocol", evaluation.get("protocol"))
    summary = summary or {}
    add("steps trained", summary.get("global_step"))
    if summary.get("best_val_cider") is not None:
        add("best validation CIDEr-D", f"{100 * summary['best_val_cider']:.1f}")
    if summary.get("best_val_rsum") is not None:  # image annotation + image search R@1/5/10, all the images
        add("best validation R-sum", f"{summary['best_val_rsum']:.1f}")
    add("seed", run_config.get("seed"))
    return {"rows": rows, "config_json": json.dumps(run_config, indent=2, sort_keys=True) if run_config else None}


def _layout_context(rows, total):
    """The layout table's rows and total, counts written with thousands separators."""
    return {"layout": [{**row, "parameters": f"{row['parameters']:,}"} for row in rows],
            "total_parameters": f"{total:,}", "total_millions": f"{total / 1e6:.2f}"}


def _glied_context(context, metrics):
    """What GLIED's template needs beyond the shared context."""
    config = context["config"]
    if metrics and "retrieval" in metrics:
        raise ValueError("the run's test metrics are retrieval results, not caption scores: pass the GLIED run as "
                         "run_dir")
    layout = parameter_layout(config)
    variant = variant_name(config)
    results = [{"metric": METRICS.get(key, (key.lower(), key))[1], "key": key, "value": round(100 * value, 2)}
               for key, value in (metrics or {}).items() if isinstance(value, (int, float))]
    return {
        "paper": PAPER,
        "variant": variant,
        "switches": [{"part": label, "formula": formula, "on": bool(config.get(key, True)), "key": key}
                     for key, label, formula in SWITCHES],
        **_layout_context(*layout),
        "paper_setting": paper_setting_counts(),
        "paper_vocabulary": f"{PAPER_VOCABULARY:,}",
        "results": results,
        "card": {
            "pipeline_tag": "image-to-text",
            "tags": ["image-captioning", "glied", "glied-base" if variant == "Base" else "glied", "region-features"],
            "results": [{"task_type": "image-to-text", "task_name": "Image Captioning",
                         "metric_type": METRICS.get(r["key"], (r["key"].lower(),))[0], "metric_name": r["metric"],
                         "value": r["value"]} for r in results],
        },
    }


def _retrieval_rows(retrieval):
    """Rows of the R@K table: one per protocol of an `evaluate_retrieval` result's "retrieval"."""
    rows = []
    for key in retrieval.get("protocol") or []:
        result = retrieval[key]
        rows.append({"protocol": _PROTOCOL_NAMES.get(key, key), "key": key, "rsum": _percent(result["rsum"]),
                     **{direction: [_percent(result[direction][k]) for k in ("r1", "r5", "r10", "medr")]
                        for direction in ("annotation", "search")}})
    return rows


def _grounding(grounding):
    if grounding is None or grounding.get("available") is False:
        return grounding
    return {**grounding, "accuracy": _percent(None if grounding["accuracy"] is None else 100 * grounding["accuracy"]),
            "upper_bound": _percent(None if grounding["upper_bound"] is None else 100 * grounding["upper_bound"])}


def _phrase_query_rows(queries):
    keys = ("r1", "r5", "r10", "medr", "p@10", "map")
    return [{"group": label, "queries": queries[group]["queries"],
             **{key.replace("@", "_at_"): _percent(queries[group][key]) for key in keys}}
            for group, label in _PHRASE_QUERY_GROUPS.items() if group in queries]


def _hmlstm_context(context, metrics):
    """What HM-LSTM's template needs beyond the shared context; `metrics` is `evaluate_retrieval`'s result."""
    config, processor = context["config"], context["processor"]
    hierarchical = bool(config.get("hierarchical", True))
    layout = hmlstm_parameter_layout(config)
    if metrics and "retrieval" not in metrics:
        raise ValueError("the run's test metrics hold no image-sentence retrieval results (\"retrieval\"): not the "
                         "test_metrics.json of examples/train_retrieval.py; pass the HM-LSTM run as run_dir")
    retrieval = (metrics or {}).get("retrieval")
    grounding = _grounding((metrics or {}).get("grounding"))
    queries = (metrics or {}).get("phrase_queries")
    comparison = []
    for paper in HMLSTM_PAPER["results"]:
        ours = None
        if retrieval and context["dataset"] in paper["datasets"] and paper["protocol"] in retrieval["protocol"]:
            result = retrieval[paper["protocol"]]
            ours = [_percent(result[direction][k]) for direction in ("annotation", "search") for k in ("r1", "r10")]
        comparison.append({"name": paper["name"], "paper": [*paper["annotation"], *paper["search"]], "ours": ours})
    results = []  # the model-index
    for row in _retrieval_rows(retrieval) if retrieval else []:
        result = retrieval[row["key"]]
        for direction, task in (("annotation", "image annotation"), ("search", "image search")):
            results += [{"task_type": "image-text-retrieval", "task_name": "Image-sentence retrieval",
                         "metric_type": "recall", "metric_name": f"{task} R@{k} ({row['key']})",
                         "value": round(result[direction][f"r{k}"], 2)} for k in (1, 5, 10)]
    if grounding and grounding.get("accuracy") is not None:
        results.append({"task_type": "phrase-grounding", "task_name": "Region-phrase grounding",
                        "metric_type": "accuracy", "metric_name": f"accuracy (IoU >= {grounding['iou_threshold']})",
                        "value": round(100 * metrics["grounding"]["accuracy"], 2)})
    return {
        "paper": HMLSTM_PAPER,
        "hierarchical": hierarchical,
        "variant": "hierarchical" if hierarchical else "flat baseline",
        **_layout_context(*layout),
        "phrase_info": processor.get("phrase_info") or {"backend": processor.get("phrase_backend")},
        "retrieval": {"images": retrieval["images"], "sentences": retrieval["sentences"],
                      "rows": _retrieval_rows(retrieval)} if retrieval else None,
        "grounding": grounding,
        "phrase_queries": {"scoring": queries["scoring"], "skipped": queries.get("skipped", 0),
                           "rows": _phrase_query_rows(queries)} if queries else None,
        "comparison": comparison,
        "card": {
            "pipeline_tag": None,  # no transformers pipeline serves a joint embedding of regions and sentences
            "tags": ["image-text-retrieval", "visual-semantic-embedding", "hm-lstm",
                     "hierarchical" if hierarchical else "flat-baseline", "region-features"],
            "results": results,
        },
    }


class _ModelType(NamedTuple):
    name: str  # in messages
    processor: str  # the processor class that saves processor_config.json
    template: Path
    context: Callable  # (shared context, test metrics) -> the template's own values


MODEL_TYPES = {
    "glied": _ModelType("a GLIED captioner", "GLIEDProcessor", TEMPLATE_PATH, _glied_context),
    "hmlstm": _ModelType("an HM-LSTM retrieval model", "HMLSTMProcessor", _SOURCE_ROOT / "model_card_hmlstm.md",
                         _hmlstm_context),
}
TEMPLATES = {key: kind.template for key, kind in MODEL_TYPES.items()}


def read_model_config(model_dir):
    """The `config.json` of a saved model folder, checked to be of a model type this module knows (`MODEL_TYPES`):
    FileNotFoundError without one, ValueError for another model type."""
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    if config is None:
        raise FileNotFoundError(f"no config.json in {model_dir}: not a saved model folder (GLIED or HM-LSTM)")
    if config.get("model_type") not in MODEL_TYPES:
        known = ", ".join(f"{key!r} ({kind.name})" for key, kind in MODEL_TYPES.items())
        raise ValueError(f"{model_dir}/config.json is a {config.get('model_type')!r} model; model cards and "
                         f"uploads know the model types {known}")
    return config


def model_card_context(model_dir, run_dir=None, repo_id=None):
    """Everything the template needs, from the model folder (and the run folder, found if not given)."""
    model_dir = Path(model_dir)
    config = read_model_config(model_dir)
    model_type = MODEL_TYPES[config["model_type"]]
    processor = _read_json(model_dir / "processor_config.json")
    if processor is None:
        raise FileNotFoundError(f"no processor_config.json in {model_dir}: save the {model_type.processor} with the "
                                f"model (processor.save_pretrained): it makes the model's inputs")
    if processor.get("processor_class", model_type.processor) != model_type.processor:
        raise ValueError(f"{model_dir}/processor_config.json is a {processor['processor_class']}'s, but "
                         f"{model_type.name} takes its {model_type.processor}")
    tokenizer = _read_json(model_dir / "tokenizer.json") or {}
    run_dir = Path(run_dir) if run_dir is not None else find_run_dir(model_dir)
    run_config = summary = metrics = None
    if run_dir is not None:
        run_config = _read_json(run_dir / "config.yaml.json")
        summary = _read_json(run_dir / "summary.json")
        metrics = _read_json(run_dir / "test_metrics.json") or (summary or {}).get("test_metrics")
    dataset = _dataset_key(run_config)
    context = {
        "model_type": config["model_type"],
        "model_name": repo_id or model_dir.resolve().name,
        "model_id": repo_id or str(model_dir),
        "config": config,
        "processor": processor,
        "vocabulary_size": len((tokenizer.get("model") or {}).get("vocab") or {}) or config.get("vocab_size"),
        "region_extractor": processor.get("region_extractor"),
        "training": _training_section(run_config, summary, config),
        "dataset": dataset,
        "dataset_name": DATASET_NAMES.get(dataset, dataset),
        "test_split": ((run_config or {}).get("data") or {}).get("test_split") or "test",
    }
    context.update(model_type.context(context, metrics))
    return context


def card_data(context, license=None, extra_tags=()):
    """The YAML front matter: library, pipeline tag, tags, datasets, metrics and the model-index of the results."""
    card = context["card"]
    eval_results = [
        EvalResult(task_type=result["task_type"], task_name=result["task_name"], dataset_type=context["dataset"],
                   dataset_name=context["dataset_name"], dataset_split=context["test_split"],
                   metric_type=result["metric_type"], metric_name=result["metric_name"],
                   metric_value=result["value"])
        for result in card["results"]
    ] if context["dataset"] else []
    return ModelCardData(
        language="en",
        license=license,
        library_name="transformers",
        pipeline_tag=card["pipeline_tag"],
        tags=list(dict.fromkeys([*card["tags"], "custom_code", *extra_tags])),
        datasets=[context["dataset"]] if context["dataset"] else None,
        metrics=list(dict.fromkeys(result["metric_type"] for result in card["results"])) or None,
        model_name=context["model_name"],
        eval_results=eval_results or None,
    )


def build_model_card(model_dir, run_dir=None, repo_id=None, license=None, template_path=None) -> ModelCard:
    """The filled model card of a saved GLIED or HM-LSTM folder (see the module docstring); `template_path`
    replaces the model type's template."""
    context = model_card_context(model_dir, run_dir=run_dir, repo_id=repo_id)
    template_path = Path(template_path) if template_path is not None else TEMPLATES[context["model_type"]]
    if not template_path.is_file():
        raise FileNotFoundError(f"model card template not found: {template_path} (pass template_path=...)")
    return ModelCard.from_template(card_data(context, license=license), template_path=str(template_path), **context)


__all__ = ["MODEL_TYPES", "TEMPLATES", "TEMPLATE_PATH", "build_model_card", "card_data", "find_run_dir",
           "hmlstm_parameter_layout", "model_card_context", "paper_setting_counts", "parameter_layout",
           "read_model_config", "variant_name"]
