"""Train GLIED (or the Base model) with Accelerate: cross-entropy, then self-critical sequence training.

    python examples/train.py --config examples/configs/coco_glied_xe.yaml
    accelerate launch --multi_gpu --num_processes 2 examples/train.py --config ...   # 2 processes (GPUs or CPU)
    python examples/train.py --config ... --set model.hidden_size=256 train.epochs=3

The YAML config has the sections `data`, `processor`, `model` (GLIEDConfig values), `train`, `scst` and
`evaluation` (see examples/configs/). `--set section.key=value` overrides a value (parsed as YAML).

A run writes to `output_dir`: `best/` (model + processor by validation CIDEr-D, `from_pretrained`-ready),
`checkpoints/last/` (everything needed to resume: weights, optimizer, scheduler, RNG states, data position),
`trainer_state.json`, `training_curve.png`, and at the end `test_metrics.json` and `test_captions.json`.
A run that finds `checkpoints/last/` resumes from it and goes on as if it had never stopped.

The loop (`train`) is shared with examples/train_retrieval.py: what is particular to a model is a *task*
(`CaptioningTask` here) with `defaults`, `check(config)`, `build_processor`, `build_model`, `collator`,
`prepare`, `step`, `validate` and `test`, and the name of its validation score (`metric`, higher is better).
"""
import argparse
import copy
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    broadcast_object_list,
    gather_object,
    set_seed,
)
from tqdm.auto import tqdm
from transformers import get_scheduler

from modeling_glied import GLIEDConfig, GLIEDForCaptioning
from modeling_glied.cider import CiderD
from modeling_glied.scst import self_critical_loss
from processing import GLIEDProcessor
from processing.captioning_data import CaptioningCollator, CaptioningDataset, model_inputs
from processing.evaluation import evaluate_model, generate_captions
from processing.feature_stores import FeatureStore
from processing.metrics import write_coco_results
from processing.tokenization_glied import split_caption

DEFAULTS = {
    "output_dir": "outputs/glied",
    "seed": 0,
    "data": {"captions": None, "features": None, "attributes": None, "train_split": "train", "val_split": "val",
             "test_split": "test", "max_train_images": None, "max_val_images": None, "max_test_images": None},
    "processor": {"path": None, "count_threshold": 5, "max_regions": 100, "max_attributes": 50,
                  "max_caption_length": 20, "region_extractor": None},
    "model": {},
    "train": {"stage": "xe", "init_from": None, "epochs": 15, "batch_size": 50, "captions_per_image": 5,
              "optimizer": "adam", "adam_epsilon": 1e-9, "learning_rate": 5e-4, "scheduler": "inverse_sqrt", "warmup_steps": 1000, "weight_decay": 0.0,
              "max_grad_norm": 1.0, "mixed_precision": "no", "checkpoint_every": 500, "max_steps": None,
              "tensorboard": False, "num_workers": 0},
    "scst": {"num_samples": 5, "baseline": "mean", "max_new_tokens": 16, "document_frequency": None},
    "evaluation": {"num_beams": 3, "max_new_tokens": 20, "batch_size": 50,
                   "metrics": ["BLEU", "METEOR", "ROUGE_L", "CIDEr"]},
}


# ---------------------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------------------
def merge(base, override, where="config"):
    merged = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if key not in merged:
            raise ValueError(f"unknown {where} key {key!r}; known: {sorted(merged)}")
        if isinstance(merged[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"{where}.{key} must be a mapping, got {value!r}")
            if key == "model":  # any GLIEDConfig value; GLIEDConfig itself rejects the bad ones
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = merge(merged[key], value, f"{where}.{key}")
        else:
            merged[key] = value
    return merged


def parse_value(raw):
    """A YAML value; also reads "1e-3", which YAML 1.1 leaves a string, as a number."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_config(path=None, overrides=(), defaults=None):
    """`defaults` (DEFAULTS: GLIED's) <- the YAML file <- `section.key=value` overrides."""
    config = copy.deepcopy(DEFAULTS if defaults is None else defaults)
    if path:
        with open(path, encoding="utf-8") as handle:
            config = merge(config, yaml.safe_load(handle) or {})
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set takes section.key=value, got {item!r}")
        dotted, raw = item.split("=", 1)
        *sections, key = dotted.split(".")
        node = {key: parse_value(raw)}
        for section in reversed(sections):
            node = {section: node}
        config = merge(config, node)
    return config


# ---------------------------------------------------------------------------------------------------------------
# atomic files
# ---------------------------------------------------------------------------------------------------------------
def replace_directory(tmp, final):
    """Move the finished `tmp` directory to `final`, so a reader never sees a half-written one."""
    final = Path(final)
    trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    if final.exists():
        os.replace(final, trash)
    os.replace(tmp, final)
    shutil.rmtree(trash, ignore_errors=True)


def temporary_sibling(final):
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")


def write_json(path, data):
    tmp = temporary_sibling(path)
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def save_model(model, processor, final):
    tmp = temporary_sibling(final)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    replace_directory(tmp, final)


def weights_digest(model):
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# data order: a fresh permutation per epoch, the same on every process and after a resume
# ---------------------------------------------------------------------------------------------------------------
class EpochShuffleSampler(torch.utils.data.Sampler):
    def __init__(self, size, seed):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self):
        return self.size


# ---------------------------------------------------------------------------------------------------------------
# building blocks of a run
# ---------------------------------------------------------------------------------------------------------------
def build_data(config, store):
    data = config["data"]
    for key in ("captions", "features"):
        if not data[key]:
            raise ValueError(f"data.{key} is required (a caption file and a converted feature store)")
    splits = {}
    for name in ("train", "val", "test"):
        splits[name] = CaptioningDataset.from_files(
            data["captions"], data[f"{name}_split"], store, data["attributes"],
            max_images=data[f"max_{name}_images"],
            captions_per_image=config["train"]["captions_per_image"] if name == "train" else None,
        )
    return splits


def build_optimizer(model, train_cfg):
    """Adam (beta2 0.98, as in the Transformer recipe), AdamW, or plain SGD with momentum."""
    name, lr, decay = train_cfg["optimizer"], train_cfg["learning_rate"], train_cfg["weight_decay"]
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=train_cfg["adam_epsilon"],
                                weight_decay=decay)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=train_cfg["adam_epsilon"],
                                 weight_decay=decay)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=decay)
    raise ValueError(f"train.optimizer must be 'adam', 'adamw' or 'sgd', got {name!r}")


def plot_curve(history, path, metric, metric_label):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h for h in history if "loss" in h]
    evals = [h for h in history if metric in h]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.plot([h["step"] for h in steps], [h["loss"] for h in steps], lw=1)
    left.set(xlabel="step", ylabel="training loss", title="loss")
    right.plot([h["epoch"] for h in evals], [h[metric] for h in evals], marker="o")
    right.set(xlabel="epoch", ylabel=metric_label, title=f"validation {metric_label}")
    figure.tight_layout()
    tmp = temporary_sibling(path).with_suffix(".png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# tasks: what the loop needs to know about a model
# ---------------------------------------------------------------------------------------------------------------
class Task:
    """A model's processor and model classes and how to build them; subclasses add batches, step and scores."""

    config_class = model_class = processor_class = None
    # DistributedDataParallel: True when a batch may leave parameters without a gradient
    find_unused_parameters = False

    def processor_extras(self, train_data):
        """Processor arguments that come from the data rather than the config."""
        return {}

    def build_processor(self, config, train_data, store):
        """The `processor.path` (or `train.init_from`) processor, else one with a vocabulary of the training captions
        and the other `processor` settings of the config."""
        settings = dict(config["processor"])
        source = settings.pop("path") or config["train"]["init_from"]
        if source:
            return self.processor_class.from_pretrained(source)
        return self.processor_class.from_captions(
            [c for r in train_data.records for c in r["captions"]], region_feature_size=store.feature_size,
            **settings, **self.processor_extras(train_data))

    def build_model(self, config, processor):
        """`train.init_from`'s model, else a new one of the `model` settings sized for the processor."""
        init_from = config["train"]["init_from"]
        if init_from:
            model = self.model_class.from_pretrained(init_from)
        else:
            model = self.model_class(self.config_class(
                vocab_size=len(processor.tokenizer), region_feature_size=processor.region_feature_size,
                pad_token_id=processor.tokenizer.pad_token_id, **config["model"]))
        processor.check_model_config(model.config)
        return model


# ---------------------------------------------------------------------------------------------------------------
# the captioning task: GLIED (or Base) with cross-entropy or self-critical training
# ---------------------------------------------------------------------------------------------------------------
class CaptioningTask(Task):
    """What the loop needs to know about GLIED: its processor, model, batches, training step and scores."""

    defaults = DEFAULTS
    metric, metric_label = "val_cider", "CIDEr-D"
    config_class, model_class, processor_class = GLIEDConfig, GLIEDForCaptioning, GLIEDProcessor

    def check(self, config):
        stage = config["train"]["stage"]
        if stage not in ("xe", "scst"):
            raise ValueError(f"train.stage must be 'xe' or 'scst', got {stage!r}")
        if stage == "scst" and not config["train"]["init_from"]:
            raise ValueError("the SCST stage starts from a cross-entropy model: set train.init_from")

    def processor_extras(self, train_data):
        """The attribute detector's words join the vocabulary."""
        return {"extra_words": sorted({w for words in (train_data.attributes or {}).values() for w in words})}

    def collator(self, processor, config):
        return CaptioningCollator(processor)

    def prepare(self, config, data, processor, accelerator, unwrapped):
        """Before the first step: the CIDEr-D reward of SCST, its document frequencies cached as safetensors."""
        self.processor, self.unwrapped, self.config, self.cider = processor, unwrapped, config, None
        if config["train"]["stage"] != "scst":
            return
        path = Path(config["scst"]["document_frequency"] or Path(config["output_dir"]) / "cider_df.safetensors")
        if accelerator.is_main_process and not path.exists():
            CiderD.from_references(list(data["train"].tokenized_references().values())).save(path)
        accelerator.wait_for_everyone()
        self.cider = CiderD.load(path)

    def step(self, model, batch, accelerator):
        """One batch's loss to back-propagate and what the progress bar reports: `(loss, name, value, extra)`."""
        inputs = model_inputs(batch)
        if self.cider is None:
            out = model(**inputs, decoder_input_ids=batch["decoder_input_ids"], labels=batch["labels"],
                        caption_image_index=batch["caption_image_index"], use_cache=False)
            # every process's mean loss weighted by its share of the global batch's words
            local_words = (batch["labels"] != -100).sum()
            global_words = accelerator.reduce(local_words.clone(), reduction="sum")
            return out.loss * local_words * accelerator.num_processes / global_words, "loss", out.loss.detach(), {}
        scst = self.config["scst"]
        refs = [[" ".join(split_caption(c)) for c in r] for r in batch["references"]]
        out = self_critical_loss(
            model, inputs, refs, self.cider.reward,
            lambda ids: [" ".join(split_caption(c)) for c in self.processor.batch_decode(ids)],
            num_samples=scst["num_samples"], baseline=scst["baseline"], max_new_tokens=scst["max_new_tokens"],
            unwrapped_model=self.unwrapped,
        )
        return out.loss, "reward", out.rewards.mean(), {"loss": out.loss.item()}

    def validate(self, model, processor, val_data, config):
        """Validation CIDEr-D of beam search (the score that picks `best/`)."""
        settings = config["evaluation"]
        predictions = generate_captions(model, processor, val_data, batch_size=settings["batch_size"],
                                        num_beams=settings["num_beams"], max_new_tokens=settings["max_new_tokens"],
                                        description="validation")
        references = val_data.tokenized_references()
        ids = list(predictions)
        score, _ = CiderD().compute_score({i: references[i] for i in ids},
                                          {i: [" ".join(split_caption(predictions[i]))] for i in ids})
        return float(score)

    def test(self, model, processor, test_data, config, output_dir):
        """The best model on the test split, scored like the COCO caption benchmark."""
        settings = config["evaluation"]
        scores, predictions = evaluate_model(model, processor, test_data, metrics=settings["metrics"],
                                             batch_size=settings["batch_size"], num_beams=settings["num_beams"],
                                             max_new_tokens=settings["max_new_tokens"], description="test")
        write_coco_results(predictions, output_dir / "test_captions.json")
        return scores, "test: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in scores.items())


# ---------------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------------
def train(config, task=None):
    """Run the configured training of `task` (default: GLIED captioning); returns a summary dict (the best
    validation score as `best_<task.metric>`, test metrics, paths)."""
    task = task or CaptioningTask()
    task.check(config)
    train_cfg = config["train"]
    output_dir = Path(config["output_dir"])
    # several processes on a machine without a GPU (accelerate launch --multi_gpu / torchrun there): gloo on CPU
    cpu_processes = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(cpu=cpu_processes, dataloader_config=DataLoaderConfiguration(split_batches=True),
                              kwargs_handlers=[DistributedDataParallelKwargs(
                                  find_unused_parameters=task.find_unused_parameters)],
                              mixed_precision=train_cfg["mixed_precision"],
                              log_with="tensorboard" if train_cfg["tensorboard"] else None, project_dir=output_dir)
    if train_cfg["batch_size"] % accelerator.num_processes:
        raise ValueError(f"train.batch_size ({train_cfg['batch_size']}) must split evenly over "
                         f"{accelerator.num_processes} processes")
    set_seed(config["seed"])
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json(output_dir / "config.yaml.json", config)
    if train_cfg["tensorboard"]:
        accelerator.init_trackers(output_dir.name, config={k: str(v) for k, v in config.items()})

    store = FeatureStore(config["data"]["features"])
    data = build_data(config, store)
    processor = task.build_processor(config, data["train"], store)
    model = task.build_model(config, processor)
    stage = train_cfg.get("stage", "train")
    if accelerator.is_main_process:
        accelerator.print(f"{stage}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
                          f"{len(processor.tokenizer)} words, {len(data['train'])} training images")

    loader = torch.utils.data.DataLoader(data["train"], batch_size=train_cfg["batch_size"],
                                         sampler=EpochShuffleSampler(len(data["train"]), config["seed"]),
                                         collate_fn=task.collator(processor, config), drop_last=True,
                                         num_workers=train_cfg["num_workers"],
                                         # its own generator: starting an epoch then draws nothing from the global
                                         # RNG, so dropout after a resume is what it would have been
                                         generator=torch.Generator().manual_seed(config["seed"]))
    steps_per_epoch = len(data["train"]) // train_cfg["batch_size"]
    if steps_per_epoch == 0:
        raise ValueError(f"train.batch_size ({train_cfg['batch_size']}) exceeds the {len(data['train'])} training images")
    total_steps = steps_per_epoch * train_cfg["epochs"]
    optimizer = build_optimizer(model, train_cfg)
    scheduler = get_scheduler(train_cfg["scheduler"], optimizer, num_warmup_steps=train_cfg["warmup_steps"],
                              num_training_steps=total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    unwrapped = accelerator.unwrap_model(model)
    task.prepare(config, data, processor, accelerator, unwrapped)

    best_key = f"best_{task.metric}"
    checkpoint_dir = output_dir / "checkpoints" / "last"
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, best_key: None, "history": []}
    if checkpoint_dir.exists():
        accelerator.load_state(str(checkpoint_dir))
        state = json.loads((checkpoint_dir / "trainer_state.json").read_text())
        accelerator.print(f"resumed from {checkpoint_dir} at epoch {state['epoch']}, step {state['global_step']}")

    def save_checkpoint():
        tmp = str(broadcast_object_list([str(temporary_sibling(checkpoint_dir))])[0])  # main process's name
        accelerator.save_state(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json(Path(tmp) / "trainer_state.json", state)
            replace_directory(tmp, checkpoint_dir)
        accelerator.wait_for_everyone()

    progress = tqdm(total=total_steps, initial=state["global_step"], desc=stage,
                    disable=not accelerator.is_local_main_process)
    stopped = False
    while state["epoch"] < train_cfg["epochs"] and not stopped:
        batches = loader
        if state["step_in_epoch"]:
            batches = accelerator.skip_first_batches(loader, state["step_in_epoch"])
        batches.set_epoch(state["epoch"])  # the sampler's permutation of this epoch, also after a resume
        model.train()
        for batch in batches:
            with accelerator.autocast():
                loss, key, reported, extra = task.step(model, batch, accelerator)
            accelerator.backward(loss)
            if train_cfg["max_grad_norm"]:
                accelerator.clip_grad_norm_(model.parameters(), train_cfg["max_grad_norm"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            state["global_step"] += 1
            state["step_in_epoch"] += 1
            value = accelerator.reduce(reported.float().clone(), reduction="mean").item()
            state["history"].append({"step": state["global_step"], key: value, "lr": scheduler.get_last_lr()[0],
                                     **extra})
            progress.update(1)
            progress.set_postfix({key: f"{value:.3f}"})
            if train_cfg["tensorboard"]:
                accelerator.log({key: value}, step=state["global_step"])
            if train_cfg["checkpoint_every"] and state["global_step"] % train_cfg["checkpoint_every"] == 0:
                save_checkpoint()
            if train_cfg["max_steps"] and state["global_step"] >= train_cfg["max_steps"]:
                stopped = True
                break
        if stopped:
            save_checkpoint()
            break
        state["epoch"] += 1
        state["step_in_epoch"] = 0
        if accelerator.is_main_process:
            unwrapped.eval()
            score = task.validate(unwrapped, processor, data["val"], config)
            state["history"].append({"epoch": state["epoch"], task.metric: score})
            accelerator.print(f"epoch {state['epoch']}: validation {task.metric_label} {score:.3f}")
            if state[best_key] is None or score > state[best_key]:
                state[best_key] = score
                save_model(unwrapped, processor, output_dir / "best")
            plot_curve(state["history"], output_dir / "training_curve.png", task.metric, task.metric_label)
        state = broadcast_object_list([state])[0]  # the main process's validation result, on every process
        save_checkpoint()
    progress.close()

    digests = gather_object([weights_digest(unwrapped)])
    if len(set(digests)) != 1:
        raise RuntimeError(f"the processes ended with different weights: {digests}")
    summary = {"stage": stage, "global_step": state["global_step"], "epochs": state["epoch"],
               best_key: state[best_key], "weights_sha256": digests[0],
               "num_processes": accelerator.num_processes, "output_dir": str(output_dir)}
    if accelerator.is_main_process:
        if not stopped:
            start = time.perf_counter()
            best = task.model_class.from_pretrained(output_dir / "best").to(accelerator.device).eval()
            scores, line = task.test(best, processor, data["test"], config, output_dir)
            write_json(output_dir / "test_metrics.json", scores)
            accelerator.print(line)
            summary.update(test_metrics=scores, test_seconds=time.perf_counter() - start)
        write_json(output_dir / "summary.json", summary)
    accelerator.wait_for_everyone()
    # the distributed wrapper goes before the process group: its reducer, as the group's last owner, would join gloo's
    # worker threads holding the GIL they need to free the last collective's tensors (a hang at exit, 1 run in ~4)
    del model
    accelerator.free_memory()
    accelerator.end_training()
    return summary


def main(argv=None, task=None):
    task = task or CaptioningTask()
    parser = argparse.ArgumentParser(description=sys.modules[type(task).__module__].__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (see examples/configs/)")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="override config values")
    args = parser.parse_args(argv)
    summary = train(load_config(args.config, args.set, task.defaults), task)
    if summary.get("test_metrics"):
        print(json.dumps(summary["test_metrics"], indent=2))
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
