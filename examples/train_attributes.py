"""Train the attribute-word detector (multiple-instance learning, Fang et al. 2015) and write the attribute map.

    python examples/train_attributes.py --features data/cocobu_att --captions data/dataset_coco.json \
        --output runs/attribute_detector [--vocab-size 1000 --epochs 10 --batch-size 64 --lr 1e-3 --top-k 20]

`--features` is a feature store converted by `processing.feature_stores.convert_feature_store` or a folder of
per-image `<image_id>.npz` / `.npy` files; `--captions` a Karpathy split JSON (train = train + restval).
The vocabulary is the `--vocab-size` most frequent content words of the training captions. Every epoch reports
precision@k, recall@k and mAP on val; the best epoch (val mAP) is saved with `save_pretrained` in `--output`,
evaluated on test at the end, and its top `--top-k` words of every image (all splits) are written to
`<output>/attributes.json` ({image_id: [words]}), the attribute map the captioner reads. `<output>/metrics.json`
holds the vocabulary size, every epoch's val metrics and the test metrics.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

try:
    import modeling_glied  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_glied.modeling_attribute_detector import GLIEDAttributeDetector, GLIEDAttributeDetectorConfig
from processing.attributes import AttributeMap, attribute_labels, build_attribute_vocabulary, precision_recall_at_k
from processing.captions import load_karpathy_split
from processing.feature_stores import METADATA_FILE, FeatureStore, open_feature_reader
from processing.processing_glied import GLIEDProcessor
from processing.tokenization_glied import GLIEDTokenizer

SPLITS = ("train", "val", "test")
CUTOFFS = (5, 10, 20)


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------
class RegionFeatures:
    """`features[image_id]` -> (N, F) float32 region features, from a converted feature store or an npz folder."""

    def __init__(self, path):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"features not found: {path}")
        if (path / METADATA_FILE).is_file():
            self.store, self.reader = FeatureStore(path), None
            self.image_ids = set(self.store.image_ids)
        else:
            self.store, self.reader = None, open_feature_reader(path, format="npz")
            self.image_ids = set(self.reader.ids())

    def __contains__(self, image_id):
        return str(image_id) in self.image_ids

    def __getitem__(self, image_id):
        record = self.store[image_id] if self.store is not None else self.reader.read(image_id)
        return np.asarray(record["region_features"], dtype=np.float32)


def load_data(features_path, captions_path):
    """The records of each split (`{"train": [...], "val": [...], "test": [...]}`, each record with `image_id` and
    `captions`) and the region features; images without features raise a ValueError naming them."""
    features = RegionFeatures(features_path)
    records = load_karpathy_split(captions_path, split="all")
    splits = {split: [] for split in SPLITS}
    for record in records:
        split = "train" if record["split"] == "restval" else record["split"]
        if split in splits:
            splits[split].append(record)
    if not splits["train"]:
        raise ValueError(f"{captions_path} has no train (or restval) images")
    missing = [record["image_id"] for split in SPLITS for record in splits[split] if record["image_id"] not in features]
    if missing:
        shown = ", ".join(repr(image_id) for image_id in missing[:10])
        raise ValueError(f"{len(missing)} image(s) of {captions_path} have no features in {features_path}: {shown}"
                         + (", ..." if len(missing) > 10 else ""))
    return splits, features


class AttributeDataset(torch.utils.data.Dataset):
    """(image_id, region features, multi-hot labels) of each image."""

    def __init__(self, records, vocabulary, features):
        self.image_ids = [record["image_id"] for record in records]
        self.labels = attribute_labels([record["captions"] for record in records], vocabulary, dtype=np.uint8)
        self.features = features

    def __len__(self):
        return len(self.image_ids)

    def __getitem__(self, index):
        image_id = self.image_ids[index]
        return image_id, self.features[image_id], self.labels[index]


class Collator:
    """Pads a batch with the captioner's processor (one home for the padding rule)."""

    def __init__(self, feature_size, max_regions):
        self.processor = GLIEDProcessor(GLIEDTokenizer(), region_feature_size=feature_size, max_regions=max_regions)

    def __call__(self, items):
        image_ids, arrays, labels = zip(*items)
        batch = self.processor(region_features=list(arrays), return_tensors="pt")
        return {
            "image_ids": list(image_ids),
            "region_features": batch["region_features"],
            "region_mask": batch["region_mask"],
            "labels": torch.from_numpy(np.stack(labels).astype(np.float32)),
        }


def make_loader(dataset, collator, batch_size, shuffle, num_workers, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collator, num_workers=num_workers,
        generator=generator, persistent_workers=False,
    )


# ----------------------------------------------------------------------------------------------------------------
# Training and evaluation
# ----------------------------------------------------------------------------------------------------------------
def run_inference(model, loader, device, top_k=None, description="eval"):
    """Probabilities (images, words) and labels of every image of `loader`, in order; with `top_k`, also each
    image's predicted words (`model.predict`)."""
    model.eval()
    probabilities, labels, predictions = [], [], []
    with torch.no_grad():
        for batch in tqdm(loader, desc=description, leave=False):
            features = batch["region_features"].to(device)
            mask = batch["region_mask"].to(device)
            probabilities.append(model(features, mask).probabilities.float().cpu().numpy())
            labels.append(batch["labels"].numpy())
            if top_k is not None:
                predictions.extend(model.predict(features, mask, top_k=top_k))
    return np.concatenate(probabilities), np.concatenate(labels), predictions


def report(metrics):
    return "  ".join(f"{name} {value:.4f}" for name, value in metrics.items())


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train GLIED's attribute-word detector (MIL, Fang et al. 2015).")
    parser.add_argument("--features", required=True, help="converted feature store or folder of <image_id>.npz files")
    parser.add_argument("--captions", required=True, help="Karpathy split JSON")
    parser.add_argument("--output", required=True, help="output folder: the detector, attributes.json, metrics.json")
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--max-regions", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=20, help="attribute words written per image")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("vocab_size", "hidden_size", "epochs", "batch_size", "max_regions", "top_k"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.lr <= 0 or args.num_workers < 0:
        parser.error("--lr must be positive and --num-workers >= 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)

    splits, features = load_data(args.features, args.captions)
    vocabulary = build_attribute_vocabulary([record["captions"] for record in splits["train"]], size=args.vocab_size)
    feature_size = features[splits["train"][0]["image_id"]].shape[1]
    cutoffs = [k for k in CUTOFFS if k <= len(vocabulary)] or [len(vocabulary)]
    print("images: " + ", ".join(f"{split} {len(splits[split])}" for split in SPLITS)
          + f"; vocabulary {len(vocabulary)} words; region features of width {feature_size}")

    collator = Collator(feature_size, args.max_regions)
    datasets = {split: AttributeDataset(splits[split], vocabulary, features) for split in SPLITS if splits[split]}
    loaders = {
        split: make_loader(dataset, collator, args.batch_size, split == "train", args.num_workers, args.seed)
        for split, dataset in datasets.items()
    }
    config = GLIEDAttributeDetectorConfig(
        attribute_words=vocabulary, region_feature_size=feature_size, hidden_size=args.hidden_size,
        hidden_dropout_prob=args.dropout,
    )
    model = GLIEDAttributeDetector(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    total_steps = args.epochs * len(loaders["train"])
    # lr(step) = lr * cosine decay to 0 over the whole run
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )

    history, best, start = [], None, time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        progress = tqdm(loaders["train"], desc=f"epoch {epoch}/{args.epochs}", leave=False)
        running = 0.0
        for step, batch in enumerate(progress, 1):
            loss = model(batch["region_features"].to(device), batch["region_mask"].to(device),
                         labels=batch["labels"].to(device)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item()
            progress.set_postfix(loss=f"{running / step:.4f}")
        entry = {"epoch": epoch, "train_loss": running / max(len(loaders["train"]), 1)}
        if "val" in loaders:
            probabilities, labels, _ = run_inference(model, loaders["val"], device, description="val")
            entry["val"] = precision_recall_at_k(probabilities, labels, k=cutoffs)
            score = entry["val"]["mAP"]
        else:
            score = -entry["train_loss"]  # no val split: the epoch with the lowest training loss
        history.append(entry)
        improved = best is None or score > best
        if improved:
            best = score
            model.save_pretrained(output)
        tqdm.write(f"epoch {epoch}: train loss {entry['train_loss']:.4f}"
                   + (f"  val {report(entry['val'])}" if "val" in entry else "") + ("  (saved)" if improved else ""))

    model = GLIEDAttributeDetector.from_pretrained(output).to(device)
    results = {"vocabulary_size": len(vocabulary), "epochs": history,
               "train_seconds": round(time.perf_counter() - start, 1)}
    attribute_map = {}
    for split, loader in loaders.items():
        probabilities, labels, predictions = run_inference(model, loader, device, top_k=args.top_k, description=split)
        attribute_map.update(zip(datasets[split].image_ids, predictions))
        if split == "test":
            results["test"] = precision_recall_at_k(probabilities, labels, k=cutoffs)
            print(f"test: {report(results['test'])}")
    attributes_path = AttributeMap.from_predictions(attribute_map.keys(), attribute_map.values()).save(
        output / "attributes.json"
    )
    (output / "metrics.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"detector saved in {output}; attribute words of {len(attribute_map)} images in {attributes_path}")
    return {"output": output, "attributes": attributes_path, "metrics": results}


if __name__ == "__main__":
    main()
