"""The image-to-text pipeline of GLIED: raw images (or precomputed region features) in, captions out.

    import processing                      # registers the pipeline under "image-to-text"
    from transformers import pipeline

    captioner = pipeline("image-to-text", model="outputs/quickstart/glied/best")   # a folder or a Hub repo id
    captioner("scene.png")                 # [{"generated_text": "a red circle above a small blue square"}]
    captioner([image_a, "b.png"], batch_size=8, num_beams=3, max_new_tokens=20)  # one list per image
    captioner({"region_features": features, "region_boxes": boxes, "attributes": ["dog", "frisbee"]})

What happens to one input:
1. A raw image (PIL image, file path or numpy array) goes through the region extractor the model was trained
   with: `RegionFeatureExtractor.from_dict(processor.region_extractor)` (detector + backbone + RoIAlign), which
   gives region features, normalised boxes and the detected labels. A model trained on precomputed features has
   no extractor description: it captions feature dicts only (a clear error says so).
2. Attribute words `A`: an input's own `"attributes"` when it has them; otherwise the words of the detected class
   names (`attribute_candidates`), after the words of an attribute-word detector (`GLIEDAttributeDetector`) when
   the pipeline has one: `pipeline(..., attribute_detector=<detector or folder or repo id>)`, or the model config's
   `attribute_detector` entry (a folder or repo id). Detector words come first (most probable first, at most
   `attribute_top_k`, at least `attribute_threshold`), then the label words they do not already hold; the processor
   keeps the first `max_attributes` words of the caption vocabulary.
3. `GLIEDProcessor` builds the model tensors; `model.generate` (options passed through: `num_beams`,
   `max_new_tokens`, `num_return_sequences`, `do_sample`, ... or `generate_kwargs={...}`; the model's
   `generation_config` gives the rest); `processor.batch_decode` gives the captions.
4. Optionally, a retrieval model re-ranks the beam candidates (`processing/reranking.py`):
   `pipeline(..., reranker=<BeamReranker or HM-LSTM folder or repo id>, rerank_candidates=K,
   rerank_beam_weight=w)` (the last two, and `reranker`, also at each call; `reranker=False` turns it off for a
   call): beam search returns its K best captions with their length-normalised log-probabilities, and the caption
   maximising `cos(image, caption) + w * beam_score` under the HM-LSTM is the `generated_text`.
   `return_candidates=True` adds `"candidates"`: every candidate, best beam first, with its `"beam_score"`,
   `"similarity"` and `"score"` (None for a caption without a word).

Precomputed features: a dict with `"region_features"` (N, F), and optionally `"region_boxes"` (N, 4, normalised
x1 y1 x2 y2) and `"attributes"` (list of words). The extractor's own output dicts (with `"labels"`, `"scores"`,
`"image_size"`) are accepted as they are and get the same attribute words as the raw image. Within one batch
either every input has boxes or none has (the model reads boxes as an extra input).

Registration (`register_pipeline`, called when `processing` is imported): the pipeline class is registered under
"image-to-text" with `PIPELINE_REGISTRY.register_pipeline` (model class `AutoModelForImageTextToText`; in 4.x
then `AutoModelForVision2Seq` for the task's other models). transformers 5 removed the task and rewrites
"image-to-text" to "image-text-to-text" before it looks at the registry; the registration therefore also makes that
rewrite (the private `transformers.pipelines._resolve_deprecated_task`) leave a registered "image-to-text" alone.
Models other than GLIED keep what transformers gives them: the pipeline hands them to the pipeline class the task
had before (4.x: `ImageToTextPipeline`; 5.x: `ImageTextToTextPipeline`, under the task name "image-text-to-text").
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Mapping

import numpy as np
import transformers
from transformers import GenerationConfig, Pipeline

from .arguments import finite_number, positive_int
from .image_regions import RegionFeatureExtractor, attribute_candidates
from .processing_glied import GLIEDProcessor
from .reranking import load_reranker
from .tokenization_glied import SPECIAL_TOKENS

TASK = "image-to-text"
NO_EXTRACTOR_MESSAGE = (
    "this model was trained on precomputed features; pass feature dicts or set processor.region_extractor "
    "(a feature dict: {'region_features': (N, F) array, 'region_boxes'?: (N, 4), 'attributes'?: [words]}; "
    "region_extractor: the RegionFeatureExtractor.to_dict() description of how raw images become features)"
)
FEATURE_DICT_KEYS = ("region_features", "region_boxes", "attributes")
EXTRACTOR_OUTPUT_KEYS = ("labels", "scores", "image_size")  # accepted in a feature dict, read only for attributes
_TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5


def _generation_parameters():
    """Names `generate` accepts as generation options (the attributes of a `GenerationConfig`)."""
    names = {name for name in vars(GenerationConfig()) if not name.startswith("_")}
    return names | {"generation_config", "logits_processor", "stopping_criteria", "streamer"}


def is_glied_model(model) -> bool:
    """True for a GLIED captioner, whether loaded from the package or as remote code."""
    return getattr(getattr(model, "config", None), "model_type", None) == "glied"


class GLIEDImageToTextPipeline(Pipeline):
    r"""
    Image captioning with a GLIED model (see the module docstring for the steps).

    Args (besides those of [`~transformers.Pipeline`]):
        region_extractor (`RegionFeatureExtractor` or `dict`, *optional*): the extractor for raw images; default
            `RegionFeatureExtractor.from_dict(processor.region_extractor)`, built at the first raw image.
        attribute_detector (`GLIEDAttributeDetector`, folder or repo id, *optional*): adds its words to the
            attribute words of raw images (default: the model config's `attribute_detector`, if any).
        attribute_top_k (`int`, defaults to 20), attribute_threshold (`float`, *optional*): which detector words.
        reranker (`BeamReranker`, HM-LSTM folder or repo id, *optional*): re-ranks the beam candidates (step 4 of
            the module docstring); it must read the same region features as the captioner.
        Generation options (`num_beams`, `max_new_tokens`, ..., or `generate_kwargs`), `return_token_ids`
        (add `"generated_token_ids"` to every result) and, with a reranker, `rerank_candidates`,
        `rerank_beam_weight` and `return_candidates` may be given here or at each call.

    Returns, per input, one dict per returned sequence: `{"generated_text": caption}` (with a reranker, one dict:
    the chosen caption).
    """

    # None: loaded when the model folder has them, no error otherwise. The GLIED processor is checked in __init__
    # (with a clear message); other models are handed to the task's previous pipeline class (see __new__).
    _load_processor = None
    _load_image_processor = None
    _load_feature_extractor = None
    _load_tokenizer = None

    def __new__(cls, model=None, *args, **kwargs):
        if cls is GLIEDImageToTextPipeline and model is not None and not is_glied_model(model):
            return _fallback_pipeline(model, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, model, *args, region_extractor=None, attribute_detector=None, attribute_top_k=20,
                 attribute_threshold=None, reranker=None, **kwargs):
        self._rerankers = {}  # folders / repo ids given at a call -> their loaded BeamReranker
        super().__init__(model, *args, **kwargs)
        # a folder without processor files still loads a default GLIEDProcessor, whose vocabulary is empty
        if not isinstance(self.processor, GLIEDProcessor) or len(self.processor.tokenizer) <= len(SPECIAL_TOKENS):
            found = "none" if self.processor is None else type(self.processor).__name__
            if isinstance(self.processor, GLIEDProcessor):
                found = "a default one with an empty vocabulary (no processor files)"
            raise ValueError(
                f"the GLIED image-to-text pipeline needs the model's GLIEDProcessor (processor_config.json and the "
                f"tokenizer files next to the model, written by processor.save_pretrained), found {found}; pass "
                f"processor=GLIEDProcessor.from_pretrained(...) or save the processor with the model"
            )
        self.processor.check_model_config(self.model.config)
        self.tokenizer = self.processor.tokenizer
        if isinstance(region_extractor, Mapping):
            region_extractor = RegionFeatureExtractor.from_dict(dict(region_extractor), device=self._extractor_device())
        if region_extractor is not None and not isinstance(region_extractor, RegionFeatureExtractor):
            raise ValueError(f"region_extractor must be a RegionFeatureExtractor or its to_dict() description, got "
                             f"{type(region_extractor).__name__}")
        self._region_extractor = region_extractor
        if region_extractor is not None:
            self.processor.check_region_extractor(region_extractor)
        if attribute_detector is None:
            attribute_detector = getattr(self.model.config, "attribute_detector", None)
        self.attribute_detector = self._load_attribute_detector(attribute_detector)
        self.attribute_top_k = positive_int(attribute_top_k, "attribute_top_k")
        self.attribute_threshold = attribute_threshold
        self.reranker = self._load_reranker(reranker) if reranker not in (None, False) else None

    # -- parameters ---------------------------------------------------------------------------------------------
    def _sanitize_parameters(self, return_token_ids=None, generate_kwargs=None, reranker=None, rerank_candidates=None,
                             rerank_beam_weight=None, return_candidates=None, **kwargs):
        """Generation options and the reranking options become forward parameters, one key each (so options given
        at a call add to, rather than replace, those given when the pipeline was built); anything else is an error
        that names it."""
        known = _generation_parameters()
        options = dict(generate_kwargs or {})
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for the GLIED image-to-text pipeline: it takes generation options "
                f"(e.g. num_beams, max_new_tokens, num_return_sequences, do_sample), generate_kwargs={{...}}, "
                f"return_token_ids, and reranker, rerank_candidates, rerank_beam_weight, return_candidates"
            )
        options.update(kwargs)
        if options.get("return_dict_in_generate"):
            raise ValueError("return_dict_in_generate is not supported by the pipeline: call model.generate for scores")
        if reranker is not None:
            options["reranker"] = False if reranker is False else self._load_reranker(reranker)
        if rerank_candidates is not None:
            options["rerank_candidates"] = positive_int(rerank_candidates, "rerank_candidates")
        if rerank_beam_weight is not None:
            options["rerank_beam_weight"] = finite_number(rerank_beam_weight, "rerank_beam_weight")
        postprocess_params = {} if return_token_ids is None else {"return_token_ids": bool(return_token_ids)}
        if return_candidates is not None:
            postprocess_params["return_candidates"] = bool(return_candidates)
        return {}, options, postprocess_params

    def __call__(self, inputs=None, **kwargs):
        """Caption `inputs`: one image / feature dict (returns a list of dicts) or a list of them (a list of lists).
        `images=` is accepted in place of `inputs`, as in transformers' own image-to-text pipeline."""
        if inputs is None:
            inputs = kwargs.pop("images", None)
        if inputs is None:
            raise ValueError("nothing to caption: pass an image, a path, a feature dict or a list of them")
        if isinstance(inputs, list) and not inputs:
            return []
        return super().__call__(inputs, **kwargs)

    def _load_reranker(self, reranker):
        """A `BeamReranker` (checked against the captioner's region features) from itself, a folder or a repo id."""
        if isinstance(reranker, str) or hasattr(reranker, "__fspath__"):
            key = str(reranker)
            if key not in self._rerankers:
                self._rerankers[key] = load_reranker(reranker, device=self._extractor_device())
            reranker = self._rerankers[key]
        reranker = load_reranker(reranker)
        reranker.check_captioner(self.processor)
        return reranker

    # -- regions and attribute words ----------------------------------------------------------------------------
    def _extractor_device(self):
        device = getattr(self, "device", None)
        return "cpu" if device is None else str(device)

    @property
    def region_extractor(self) -> RegionFeatureExtractor:
        """The extractor of raw images, rebuilt from `processor.region_extractor` at first use."""
        if self._region_extractor is None:
            self._region_extractor = self.processor.build_region_extractor(self._extractor_device())
            if self._region_extractor is None:
                raise ValueError(NO_EXTRACTOR_MESSAGE)
        return self._region_extractor

    def _load_attribute_detector(self, detector):
        if detector is None:
            return None
        if isinstance(detector, (str, bytes)) or hasattr(detector, "__fspath__"):
            from modeling_glied import GLIEDAttributeDetector

            detector = GLIEDAttributeDetector.from_pretrained(detector)
        if not callable(getattr(detector, "predict", None)) or not hasattr(detector, "config"):
            raise ValueError(f"attribute_detector must be a GLIEDAttributeDetector, a folder or a repo id, got "
                             f"{type(detector).__name__}")
        detector_width = detector.config.region_feature_size
        if detector_width != self.processor.region_feature_size:
            raise ValueError(
                f"the attribute detector reads region features of width {detector_width}, the model's are "
                f"{self.processor.region_feature_size} wide"
            )
        return detector.to(self.device).eval()

    def attribute_words(self, region_features, labels=None):
        """Attribute words of one image: the detector's words (if the pipeline has a detector), then the words of the
        detected class names `labels` that are not already there."""
        words = []
        if self.attribute_detector is not None:
            ranked = self.attribute_detector.predict(np.asarray(region_features, dtype=np.float32),
                                                     top_k=self.attribute_top_k, threshold=self.attribute_threshold)
            words = [word for word, _ in ranked[0]]
        if labels is not None:
            words += [word for word in attribute_candidates({"labels": list(labels)}) if word not in words]
        return words

    def regions(self, image):
        """Extractor output of one raw image (`region_features`, `region_boxes`, `labels`, `scores`, `image_size`)
        plus its `attributes` (the words the pipeline gives the model)."""
        output = self.region_extractor(image)
        return {**output, "attributes": self.attribute_words(output["region_features"], output["labels"])}

    def _feature_dict(self, item, position):
        unknown = set(item) - set(FEATURE_DICT_KEYS) - set(EXTRACTOR_OUTPUT_KEYS)
        if unknown:
            raise ValueError(f"input {position}: unknown keys {sorted(unknown)} in a feature dict; it takes "
                             f"{list(FEATURE_DICT_KEYS)} (and an extractor's {list(EXTRACTOR_OUTPUT_KEYS)})")
        if item.get("region_features") is None:
            raise ValueError(f"input {position}: a feature dict needs 'region_features', an (N, "
                             f"{self.processor.region_feature_size}) array")
        if item.get("attributes") is not None:
            attributes = item["attributes"]
        else:
            attributes = self.attribute_words(item["region_features"], item.get("labels"))
        return {"region_features": item["region_features"], "region_boxes": item.get("region_boxes"),
                "attributes": attributes}

    def prepare_inputs(self, inputs):
        """The model tensors (a padded `BatchFeature`) of a list of raw images and / or feature dicts: exactly what
        the pipeline feeds `generate` when these inputs form one batch."""
        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        items = [self._feature_dict(item, i) if isinstance(item, Mapping) else self.regions(item)
                 for i, item in enumerate(inputs)]
        with_boxes = [item.get("region_boxes") is not None for item in items]
        if any(with_boxes) and not all(with_boxes):
            raise ValueError("within one batch either every input has region_boxes or none has: the model reads boxes "
                             "as an extra input, so a batch cannot mix the two (use batch_size=1)")
        return self.processor(
            region_features=[item["region_features"] for item in items],
            region_boxes=[item["region_boxes"] for item in items] if all(with_boxes) else None,
            attributes=[item["attributes"] if isinstance(item["attributes"], str) else list(item["attributes"])
                        for item in items],  # a string is a string of words
            return_tensors="pt",
        )

    # -- the three steps ----------------------------------------------------------------------------------------
    def preprocess(self, inputs):
        # plain dict of (1, ...) tensors: transformers pads them to a batch with zeros (= padding of every key)
        return dict(self.prepare_inputs([inputs]))

    def _forward(self, model_inputs, **generate_kwargs):
        batch = model_inputs["region_features"].shape[0]
        at_call = generate_kwargs.pop("reranker", None)
        reranker = self.reranker if at_call is None else (at_call or None)  # False: off for this call
        rerank = {"num_candidates": generate_kwargs.pop("rerank_candidates", None),
                  "beam_weight": generate_kwargs.pop("rerank_beam_weight", None)}
        if reranker is None:
            orphans = [name for name, value in zip(("rerank_candidates", "rerank_beam_weight"), rerank.values())
                       if value is not None and at_call is not False]
            if orphans:
                raise ValueError(f"{orphans} need a reranker: pipeline(..., reranker=<BeamReranker or HM-LSTM folder>)")
            ids = self.model.generate(**model_inputs, **generate_kwargs)
            # (images x sequences, T) -> (images, sequences, T), so that transformers splits the batch per image
            return {"generated_ids": ids.reshape(batch, ids.shape[0] // batch, ids.shape[-1])}
        reranked = reranker.generate(self.model, self.processor, model_inputs, **rerank, **generate_kwargs)
        return {"generated_ids": reranked.sequences, "beam_scores": reranked.beam_scores,
                "similarities": reranked.similarities, "rerank_scores": reranked.scores, "best": reranked.best}

    def postprocess(self, model_outputs, return_token_ids=False, return_candidates=False):
        sequences = model_outputs["generated_ids"][0]
        captions = self.processor.batch_decode(sequences, skip_special_tokens=True)
        if "best" not in model_outputs:
            if return_candidates:
                raise ValueError("return_candidates needs a reranker: pipeline(..., reranker=<BeamReranker or "
                                 "HM-LSTM folder>)")
            chosen = range(len(captions))
        else:
            chosen = [int(model_outputs["best"].reshape(-1)[0])]
        records = [{"generated_text": captions[k]} for k in chosen]
        if return_token_ids:
            for record, k in zip(records, chosen):
                record["generated_token_ids"] = sequences[k].tolist()
        if return_candidates:
            rows = [model_outputs[key].reshape(-1, len(captions))[0].tolist()
                    for key in ("beam_scores", "similarities", "rerank_scores")]
            records[0]["candidates"] = [
                {"generated_text": caption, "beam_score": beam,
                 "similarity": None if math.isnan(similarity) else similarity,
                 "score": None if math.isinf(score) else score}
                for caption, beam, similarity, score in zip(captions, *rows)]
        return records


# ----------------------------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------------------------
_FALLBACK = {}  # "class", "task": the pipeline other models get for "image-to-text" (set by register_pipeline)


def _resolve_class(impl):
    if isinstance(impl, str):  # transformers 5 stores dotted paths
        module, name = impl.rsplit(".", 1)
        return getattr(importlib.import_module(module), name)
    return impl


def _fallback_pipeline(model, *args, **kwargs):
    """The pipeline transformers itself gives a non-GLIED model for "image-to-text", with the components it uses."""
    if "class" not in _FALLBACK:
        raise ValueError(
            f"the GLIED image-to-text pipeline captions GLIED models only (got model type "
            f"{getattr(getattr(model, 'config', None), 'model_type', None)!r}), and this transformers version has no "
            f"other image-to-text pipeline; use the 'image-text-to-text' task"
        )
    fallback = _FALLBACK["class"]
    for component in ("tokenizer", "feature_extractor", "image_processor", "processor"):
        if getattr(fallback, f"_load_{component}", None) is False:
            kwargs.pop(component, None)
    kwargs["task"] = _FALLBACK["task"]
    return fallback(model, *args, **kwargs)


class _quiet_loggers:
    """Raise transformers' pipeline loggers to ERROR for a moment (their notes are expected here)."""

    names = ("transformers.pipelines", "transformers.pipelines.base")

    def __enter__(self):
        self.levels = [(logging.getLogger(name), logging.getLogger(name).level) for name in self.names]
        for logger, _ in self.levels:
            logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for logger, level in self.levels:
            logger.setLevel(level)


def _keep_registered_image_to_text(registry, pipelines_module):
    """transformers 5 rewrites "image-to-text" to "image-text-to-text" before it looks at the registry. Make the
    rewrite leave the task name alone while a pipeline is registered under it (it stays for everything else).
    Returns the task transformers would have rewritten "image-to-text" to (None when it keeps the name)."""
    current = getattr(pipelines_module, "_resolve_deprecated_task", None)
    if current is None:
        return None
    original = getattr(current, "__wrapped__", current)
    with _quiet_loggers():  # the rewrite's deprecation note is logged once per process; it no longer applies
        replacement = original(TASK)
    if replacement == TASK or current is not original:
        return None if replacement == TASK else replacement

    def resolve_task(task):
        if task == TASK and TASK in registry.supported_tasks:
            return task
        return original(task)

    resolve_task.__wrapped__ = original
    resolve_task.__doc__ = original.__doc__
    pipelines_module._resolve_deprecated_task = resolve_task
    return replacement


def register_pipeline():
    """Register `GLIEDImageToTextPipeline` under "image-to-text" (safe to call more than once)."""
    import transformers.pipelines as pipelines_module

    registry = pipelines_module.PIPELINE_REGISTRY
    previous = registry.supported_tasks.get(TASK)
    replacement = _keep_registered_image_to_text(registry, pipelines_module)
    if previous is not None and _resolve_class(previous["impl"]) is not GLIEDImageToTextPipeline:
        _FALLBACK.update({"class": _resolve_class(previous["impl"]), "task": TASK})  # 4.x: ImageToTextPipeline
    elif "class" not in _FALLBACK and replacement in registry.supported_tasks:
        _FALLBACK.update({"class": _resolve_class(registry.supported_tasks[replacement]["impl"]),
                          "task": replacement})  # 5.x: what the rewrite would have given
    if _TRANSFORMERS_5:
        auto_classes = (transformers.AutoModelForImageTextToText,)
    else:  # GLIED without 4.57's deprecation warning of AutoModelForVision2Seq, which the task's other models need
        auto_classes = (transformers.AutoModelForImageTextToText, transformers.AutoModelForVision2Seq)
    with _quiet_loggers():  # "image-to-text is already registered. Overwriting ..." is the point in 4.x
        registry.register_pipeline(TASK, pipeline_class=GLIEDImageToTextPipeline, pt_model=auto_classes, type="image")


__all__ = ["GLIEDImageToTextPipeline", "NO_EXTRACTOR_MESSAGE", "is_glied_model", "register_pipeline"]
