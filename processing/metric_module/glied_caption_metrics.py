"""`evaluate` module for COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE), offline.

    import evaluate
    metric = evaluate.load("processing/metric_module/glied_caption_metrics.py")  # or the folder
    metric.compute(predictions=["a dog runs"], references=[["a dog is running", "a brown dog runs"]])

A thin wrapper of `processing.metrics.compute_caption_metrics` (the glied package must be installed:
`pip install -e .`); evaluate copies this script into its cache, so it imports the package by its absolute name.
"""
import datasets
import evaluate

from processing.metrics import compute_caption_metrics

_DESCRIPTION = """\
The COCO caption evaluation (pycocoevalcap): PTB tokenisation, then BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and SPICE.
SPICE needs the Stanford CoreNLP 3.6.0 jars in pycocoevalcap's spice/lib folder; without them it is skipped with a
warning by default, and asking for it in `metrics` raises. Values are pycocoevalcap's (papers print them x100).
"""

_CITATION = """\
@article{chen2015microsoft,
  title={Microsoft COCO Captions: Data Collection and Evaluation Server},
  author={Chen, Xinlei and Fang, Hao and Lin, Tsung-Yi and Vedantam, Ramakrishna and Gupta, Saurabh and
          Doll{\\'a}r, Piotr and Zitnick, C. Lawrence},
  journal={arXiv preprint arXiv:1504.00325},
  year={2015}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted captions, one string per image.
    references: list with, per image, a list of reference captions (a single string is one reference).
    metrics: optional subset of "BLEU", "METEOR", "ROUGE_L", "CIDEr", "SPICE" (default: all, SPICE only when its
        jars are present).
    tokenize: PTB-tokenise first (default True, the COCO protocol).
Returns:
    dict with "BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr" and "SPICE" (those computed).
Examples:
    >>> metric = evaluate.load("processing/metric_module/glied_caption_metrics.py")
    >>> metric.compute(predictions=["a dog runs", "a cat sleeps"],
    ...                references=[["a dog is running"], ["a cat sleeping on a bed", "a sleeping cat"]],
    ...                metrics=["BLEU", "CIDEr"])
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GliedCaptionMetrics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            codebase_urls=["https://github.com/salaniz/pycocoevalcap"],
            reference_urls=["https://arxiv.org/abs/1504.00325"],
        )

    def _compute(self, predictions, references, metrics=None, tokenize=True):
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
        refs = {i: [r] if isinstance(r, str) else list(r) for i, r in enumerate(references)}
        preds = dict(enumerate(predictions))
        return compute_caption_metrics(refs, preds, metrics=metrics, tokenize=tokenize)
