"""COCO caption evaluation: BLEU-1..4, METEOR, ROUGE-L, CIDEr(-D) and SPICE as the COCO caption code computes them.

`pycocoevalcap.eval.COCOEvalCap.evaluate()` always runs SPICE, whose Stanford CoreNLP 3.6.0 jars are downloaded at
first use (that fails offline), so this module PTB-tokenises once and calls each pycocoevalcap scorer one by one.
Scores are pycocoevalcap's raw values (papers print them x100: CIDEr 1.182 is reported as 118.2).
"""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Hashable, Mapping, Sequence

import numpy as np

__all__ = [
    "DEFAULT_METRICS",
    "METRIC_KEYS",
    "CaptionEvaluation",
    "evaluate_captions",
    "compute_caption_metrics",
    "ptb_tokenize",
    "spice_jar_paths",
    "spice_available",
    "write_coco_results",
    "read_coco_results",
    "pycocoevalcap_cider",
]

logger = logging.getLogger(__name__)

DEFAULT_METRICS = ("BLEU", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
# every key a result dict can hold, in the usual table order
METRIC_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
_ALIASES = {"BLEU": "BLEU", "METEOR": "METEOR", "ROUGEL": "ROUGE_L", "ROUGE": "ROUGE_L", "CIDER": "CIDEr",
            "CIDERD": "CIDEr", "SPICE": "SPICE"}
_CORENLP_ZIP_URL = "http://nlp.stanford.edu/software/stanford-corenlp-full-2015-12-09.zip"


@dataclass
class CaptionEvaluation:
    """Corpus scores {metric key: value}, per-image scores {image_id: {metric key: value}}, and skipped metrics."""

    scores: dict[str, float]
    per_image: dict[Hashable, dict[str, float]]
    skipped: dict[str, str] = field(default_factory=dict)


def _normalise_metrics(metrics: Sequence[str] | None) -> tuple[list[str], bool]:
    """Canonical metric names in DEFAULT_METRICS order, and whether they were asked for explicitly."""
    if metrics is None:
        return list(DEFAULT_METRICS), False
    if isinstance(metrics, str):
        metrics = [metrics]
    chosen = set()
    for name in metrics:
        key = re.sub(r"[-_\s]", "", str(name)).upper()
        if key not in _ALIASES:
            raise ValueError(f"unknown caption metric {name!r}; choose from {', '.join(DEFAULT_METRICS)}")
        chosen.add(_ALIASES[key])
    if not chosen:
        raise ValueError("metrics is empty: ask for at least one of " + ", ".join(DEFAULT_METRICS))
    return [m for m in DEFAULT_METRICS if m in chosen], True


def _validate(references: Mapping, predictions: Mapping) -> tuple[dict, dict]:
    if not isinstance(references, Mapping):
        raise ValueError(f"references must be a dict {{image_id: [caption, ...]}}, got {type(references).__name__}")
    if not isinstance(predictions, Mapping):
        raise ValueError(f"predictions must be a dict {{image_id: caption}}, got {type(predictions).__name__}")
    if not predictions:
        raise ValueError("predictions is empty: nothing to evaluate")
    missing = [k for k in predictions if k not in references]
    if missing:
        raise ValueError(
            f"{len(missing)} prediction image id(s) have no references, e.g. {missing[:5]} "
            f"(reference ids look like {list(references)[:3]})"
        )
    gts, res = {}, {}
    for image_id, pred in predictions.items():
        if isinstance(pred, (list, tuple)):
            if len(pred) == 0:
                raise ValueError(f"prediction for image {image_id!r} is an empty list; give one caption string")
            if len(pred) != 1:
                raise ValueError(f"prediction for image {image_id!r} holds {len(pred)} captions; give exactly one")
            pred = pred[0]
        if not isinstance(pred, str):
            raise ValueError(f"prediction for image {image_id!r} must be a string, got {type(pred).__name__}")
        refs = references[image_id]
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise ValueError(f"references of image {image_id!r} must be a list of strings, got {type(refs).__name__}")
        if len(refs) == 0:
            raise ValueError(f"references of image {image_id!r} is an empty list")
        if not all(isinstance(r, str) for r in refs):
            raise ValueError(f"references of image {image_id!r} must all be strings")
        gts[image_id] = list(refs)
        res[image_id] = pred
    return gts, res


def ptb_tokenize(captions: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
    """PTB-tokenise, lower-case and strip punctuation with pycocoevalcap's `PTBTokenizer` (one Java call)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    packed = {k: [{"caption": c} for c in caps] for k, caps in captions.items()}
    if not packed:
        return {}
    out = PTBTokenizer().tokenize(packed)
    for k, caps in captions.items():
        if len(out.get(k, ())) != len(caps):
            raise RuntimeError(f"PTBTokenizer returned {len(out.get(k, ()))} captions for {k!r}, expected {len(caps)}")
    return out


def spice_jar_paths() -> list[str]:
    """The Stanford CoreNLP 3.6.0 jars SPICE needs, where pycocoevalcap's spice looks for them (its spice/lib)."""
    from pycocoevalcap.spice import get_stanford_models as stanford

    lib = os.path.join(os.path.abspath(stanford.SPICEDIR), stanford.SPICELIB)
    return [os.path.join(lib, f"{stanford.JAR}{suffix}.jar") for suffix in ("", "-models")]


def spice_available() -> bool:
    """True when SPICE can run without downloading (both CoreNLP jars are in pycocoevalcap's spice/lib)."""
    return all(os.path.isfile(p) for p in spice_jar_paths())


def _spice_missing_message() -> str:
    paths = spice_jar_paths()
    missing = [os.path.basename(p) for p in paths if not os.path.isfile(p)]
    return (
        f"SPICE needs Stanford CoreNLP 3.6.0, and {', '.join(missing)} is missing from {os.path.dirname(paths[0])}. "
        f"pycocoevalcap would download it at first use (needs network access and ~400 MB). Install it by hand: "
        f"take stanford-corenlp-3.6.0.jar and stanford-corenlp-3.6.0-models.jar out of {_CORENLP_ZIP_URL} and copy "
        f"them into that folder. Or leave SPICE out of `metrics`."
    )


def _bleu(gts, res):
    from pycocoevalcap.bleu.bleu import Bleu

    score, scores = Bleu(4).compute_score(gts, res, verbose=0)
    return {f"BLEU-{i + 1}": (score[i], scores[i]) for i in range(4)}


def _meteor(gts, res):
    from pycocoevalcap.meteor.meteor import Meteor

    try:
        scorer = Meteor()
    except OSError as err:
        raise RuntimeError(f"METEOR needs Java on PATH: {err}") from err
    process = scorer.meteor_p
    try:
        score, scores = scorer.compute_score(gts, res)
    except (ValueError, OSError) as err:
        stderr = ""
        if process.poll() is not None and process.stderr is not None:
            stderr = process.stderr.read().decode(errors="replace")[-2000:]
        raise RuntimeError(f"METEOR (Java) failed: {err}. {stderr}".strip()) from err
    finally:  # stop the JVM now; pycocoevalcap's __del__ would block forever on a lock left held by an error
        process.kill()
        process.wait()
        if scorer.lock.locked():
            scorer.lock.release()
    return {"METEOR": (score, scores)}


def _rouge(gts, res):
    from pycocoevalcap.rouge.rouge import Rouge

    score, scores = Rouge().compute_score(gts, res)
    return {"ROUGE-L": (score, scores)}


def _cider(gts, res):
    from pycocoevalcap.cider.cider import Cider

    score, scores = Cider().compute_score(gts, res)
    return {"CIDEr": (score, scores)}


def _spice(gts, res):
    from pycocoevalcap.spice.spice import Spice

    ids = sorted(gts)  # pycocoevalcap's Spice returns per-image scores in sorted id order
    # SPICE 1.0 predates Java 9 modules; on newer JVMs its cache serialiser needs these packages opened.
    packages = ("java.lang", "java.util", "java.math", "java.net", "java.text", "java.io", "java.util.concurrent")
    opens = " ".join(f"--add-opens=java.base/{p}=ALL-UNNAMED" for p in packages)
    previous = os.environ.get("JDK_JAVA_OPTIONS")
    os.environ["JDK_JAVA_OPTIONS"] = f"{previous} {opens}" if previous else opens
    try:
        score, per_image = Spice().compute_score(gts, res)
    except subprocess.CalledProcessError as err:
        raise RuntimeError(
            f"SPICE (Java) failed with exit status {err.returncode}; its output is above. SPICE 1.0 is known to "
            "run on Java 8 or 11; newer JVMs may fail."
        ) from err
    finally:
        if previous is None:
            os.environ.pop("JDK_JAVA_OPTIONS", None)
        else:
            os.environ["JDK_JAVA_OPTIONS"] = previous
    by_id = {i: s["All"]["f"] for i, s in zip(ids, per_image)}
    return {"SPICE": (score, [by_id[i] for i in gts])}


_SCORERS = {"BLEU": _bleu, "METEOR": _meteor, "ROUGE_L": _rouge, "CIDEr": _cider, "SPICE": _spice}


def evaluate_captions(
    references: Mapping[Hashable, Sequence[str]],
    predictions: Mapping[Hashable, str],
    metrics: Sequence[str] | None = None,
    *,
    tokenize: bool = True,
) -> CaptionEvaluation:
    """Score predicted captions against references like the COCO caption evaluation, with per-image scores.

    Args:
        references: {image_id: [reference caption, ...]}; ids without a prediction are ignored.
        predictions: {image_id: caption} (a one-element list is accepted too); every id must have references.
        metrics: any of "BLEU", "METEOR", "ROUGE_L", "CIDEr", "SPICE". None means all five, where SPICE is
            skipped with a warning when its CoreNLP jars are missing; asking for SPICE explicitly raises then.
        tokenize: PTB-tokenise both sides first (the COCO protocol); False if they are already tokenised.

    Returns a `CaptionEvaluation` with `scores` keyed by "BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE".
    """
    names, explicit = _normalise_metrics(metrics)
    gts, res = _validate(references, predictions)
    skipped: dict[str, str] = {}
    if "SPICE" in names and not spice_available():
        message = _spice_missing_message()
        if explicit:
            raise RuntimeError(message)
        warnings.warn(f"SPICE skipped: {message}", RuntimeWarning, stacklevel=2)
        names.remove("SPICE")
        skipped["SPICE"] = message
    if tokenize:
        # one Java call for both sides
        both = {**{("ref", k): v for k, v in gts.items()}, **{("pred", k): [v] for k, v in res.items()}}
        tokenized = ptb_tokenize(both)
        gts = {k: tokenized[("ref", k)] for k in gts}
        res = {k: tokenized[("pred", k)] for k in res}
    else:
        res = {k: [v] for k, v in res.items()}
    scores: dict[str, float] = {}
    per_image: dict[Hashable, dict[str, float]] = {k: {} for k in gts}
    for name in names:
        logger.info("computing %s", name)
        for key, (corpus, per) in _SCORERS[name](gts, res).items():
            scores[key] = float(corpus)
            for image_id, value in zip(gts, per):
                per_image[image_id][key] = float(value)
    order = {k: i for i, k in enumerate(METRIC_KEYS)}
    scores = dict(sorted(scores.items(), key=lambda kv: order[kv[0]]))
    return CaptionEvaluation(scores=scores, per_image=per_image, skipped=skipped)


def compute_caption_metrics(
    references: Mapping[Hashable, Sequence[str]],
    predictions: Mapping[Hashable, str],
    metrics: Sequence[str] | None = None,
    *,
    tokenize: bool = True,
) -> dict[str, float]:
    """Corpus scores {"BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE"} (see `evaluate_captions`)."""
    return evaluate_captions(references, predictions, metrics, tokenize=tokenize).scores


def write_coco_results(predictions: Mapping[Hashable, str], path: str | os.PathLike) -> str:
    """Write predictions in the COCO caption result format [{"image_id": ..., "caption": ...}]; returns the path."""
    rows = []
    for image_id, caption in predictions.items():
        if not isinstance(caption, str):
            raise ValueError(f"caption of image {image_id!r} must be a string, got {type(caption).__name__}")
        if isinstance(image_id, np.integer):
            image_id = int(image_id)
        if not isinstance(image_id, (int, str)) or isinstance(image_id, bool):
            raise ValueError(f"image id {image_id!r} must be an int or a str for the COCO result format")
        rows.append({"image_id": image_id, "caption": caption})
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f, ensure_ascii=False)
    return path


def read_coco_results(path: str | os.PathLike) -> dict[Hashable, str]:
    """Read a COCO caption result file back into {image_id: caption} (a repeated id is an error)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no COCO result file at {path}")
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: a COCO result file is a JSON list of {{'image_id', 'caption'}} objects")
    out: dict[Hashable, str] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "image_id" not in row or not isinstance(row.get("caption"), str):
            raise ValueError(f"{path}: entry #{i} lacks an image_id or a caption string")
        if row["image_id"] in out:
            raise ValueError(f"{path}: image {row['image_id']!r} appears twice")
        out[row["image_id"]] = row["caption"]
    return out


def pycocoevalcap_cider(
    gts: Mapping[Hashable, Sequence[str]],
    res: Mapping[Hashable, Sequence[str]],
    document_frequency: Mapping[tuple[str, ...], float] | None = None,
    ref_len: float | None = None,
) -> tuple[float, np.ndarray]:
    """pycocoevalcap's own CIDEr-D, optionally with fixed document frequencies and ref_len (slow reference).

    Without `document_frequency` this is `Cider().compute_score(gts, res)`. With it, pycocoevalcap's
    `CiderScorer` scores with the given df ({n-gram tuple: count}) and ref_len (log of the number of images
    they were counted over) instead of the ones of `gts`: the training-set reward of self-critical training.
    It is the reference that `modeling_glied.cider.CiderD` is checked and timed against.
    """
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    if document_frequency is None:
        if ref_len is not None:
            raise ValueError("ref_len is only used together with document_frequency")
        return Cider().compute_score(gts, res)
    if ref_len is None:
        raise ValueError("document_frequency needs ref_len, the log of the number of images it was counted over")
    if gts.keys() != res.keys():
        raise ValueError("gts and res must have the same image ids")

    fixed_ref_len = float(ref_len)

    class _FixedDfScorer(CiderScorer):
        # compute_cider() assigns ref_len = log(#images scored); the property keeps the given value instead
        ref_len = property(lambda self: fixed_ref_len, lambda self, value: None)

    scorer = _FixedDfScorer()
    for image_id in gts:
        scorer += (res[image_id][0], list(gts[image_id]))
    scorer.document_frequency = defaultdict(float, {tuple(k): float(v) for k, v in document_frequency.items()})
    scores = np.array(scorer.compute_cider())
    return np.mean(scores), scores
