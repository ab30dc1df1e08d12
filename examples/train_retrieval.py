"""Train the Hierarchical Multimodal LSTM (HM-LSTM) retrieval model with Accelerate, in train.py's loop.

    python examples/train_retrieval.py --config examples/configs/quickstart_hmlstm.yaml
    python examples/train_retrieval.py --config ... --set model.hierarchical=false output_dir=outputs/flat
    accelerate launch --multi_gpu --num_processes 2 examples/train_retrieval.py --config ...

The same data sets as GLIED (a caption file and a converted feature store) and the same run layout: `best/`
(model + processor by validation R-sum, `from_pretrained`-ready), `checkpoints/last/` (exact resume),
`training_curve.png`, `summary.json`, and at the end `test_metrics.json`: image annotation and image search
R@1/5/10 and median rank (COCO 1K and 5K on a 5,000-image split, else all the images: Flickr30K's protocol), plus
region-phrase grounding (`evaluation.grounding: true`, the caption file carries phrase boxes) and phrase-level
queries (`evaluation.phrase_queries`: "quickstart" or a JSON file).

Config sections: `data` (as train.py), `processor` (HMLSTMProcessor settings), `model` (HMLSTMConfig values),
`train` (as train.py, without the SCST stage) and `evaluation`. With several processes each one ranks its share
of the batch against itself (the negatives of a pair are the other pairs on its process).
"""
import sys

from tqdm.auto import tqdm

from modeling_glied import HMLSTMConfig, HMLSTMModel
from processing.processing_hmlstm import HMLSTMProcessor
from processing.retrieval_data import RetrievalCollator, retrieval_inputs
from processing.retrieval_evaluation import (
    embed_dataset,
    evaluate_retrieval,
    format_results,
    load_phrase_queries,
    retrieval_results,
)
from train import DEFAULTS as CAPTIONING_DEFAULTS
from train import Task, main  # examples/ is on sys.path when this script runs

DEFAULTS = {
    "output_dir": "outputs/hmlstm",
    "seed": 0,
    "data": dict(CAPTIONING_DEFAULTS["data"]),
    "processor": {"path": None, "count_threshold": 5, "max_regions": 100, "max_sentence_length": 32,
                  "phrase_backend": "auto", "region_extractor": None},
    "model": {},
    "train": {**{k: v for k, v in CAPTIONING_DEFAULTS["train"].items() if k != "stage"},
              "batch_size": 128, "optimizer": "adam", "adam_epsilon": 1e-8, "learning_rate": 2e-4,
              "scheduler": "cosine", "warmup_steps": 100, "max_grad_norm": 2.0},
    "evaluation": {"batch_size": 128, "protocol": "auto", "grounding": False, "phrase_queries": None},
}


class RetrievalTask(Task):
    """What train.py's loop needs to know about the HM-LSTM: processor, model, batches, loss and scores."""

    defaults = DEFAULTS
    metric, metric_label = "val_rsum", "R-sum"
    find_unused_parameters = True  # a process's share of a batch may hold no phrase: the phrase LSTM rests
    config_class, model_class, processor_class = HMLSTMConfig, HMLSTMModel, HMLSTMProcessor

    def check(self, config):
        if config["evaluation"]["protocol"] not in ("auto", "coco1k", "coco5k", "full"):
            raise ValueError(f"evaluation.protocol must be auto, coco1k, coco5k or full, got "
                             f"{config['evaluation']['protocol']!r}")

    def build_processor(self, config, train_data, store):
        self.train_records = train_data.records
        return super().build_processor(config, train_data, store)

    def build_model(self, config, processor):
        model = super().build_model(config, processor)
        self.hierarchical = model.config.hierarchical  # the flat model ignores phrases: no parsing for it
        return model

    def collator(self, processor, config):
        hierarchical = self.hierarchical
        if hierarchical:  # parse every training caption's phrases once, before DataLoader workers copy the memo
            captions = [c for r in self.train_records for c in r["captions"]]
            for start in tqdm(range(0, len(captions), 2000), desc=f"phrases ({processor.phrase_backend})"):
                processor.memoise_phrases(captions[start:start + 2000])
        return RetrievalCollator(processor, captions_per_image=config["train"]["captions_per_image"],
                                 with_phrases=hierarchical)

    def prepare(self, config, data, processor, accelerator, unwrapped):
        """Nothing to prepare: the ranking loss needs only the batch."""

    def step(self, model, batch, accelerator):
        out = model(**retrieval_inputs(batch))
        return out.loss, "loss", out.loss.detach(), {"sentence_loss": out.sentence_loss.item(),
                                                     "phrase_loss": out.phrase_loss.item()}

    def validate(self, model, processor, val_data, config):
        """R-sum (the six recalls of image annotation and image search) over the whole validation split."""
        embeddings = embed_dataset(model, processor, val_data, batch_size=config["evaluation"]["batch_size"],
                                   with_regions=False)
        return float(retrieval_results(embeddings, "full")["full"]["rsum"])

    def test(self, model, processor, test_data, config, output_dir):
        settings, data = config["evaluation"], config["data"]
        queries = None
        if settings["phrase_queries"]:
            queries = load_phrase_queries(settings["phrase_queries"], captions=data["captions"],
                                          split=data["test_split"])
        results = evaluate_retrieval(model, processor, test_data, protocol=settings["protocol"],
                                     grounding=data["captions"] if settings["grounding"] else None,
                                     phrase_queries=queries, batch_size=settings["batch_size"])
        return results, "test:\n" + format_results(results)


if __name__ == "__main__":
    sys.exit(0 if main(task=RetrievalTask()) else 1)
