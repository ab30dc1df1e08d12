"""Time the vectorised CIDEr-D (modeling_glied.cider.CiderD) against pycocoevalcap on an SCST-like batch.

    python benchmarks/bench_cider.py            # 50 images x 5 refs, 5 samples + greedy each, df of 5,000 images
    python benchmarks/bench_cider.py --quick    # smaller and fewer repeats (a smoke run)

Two settings, each timed side by side on the same inputs, values asserted equal (1e-9):
- "reward, training df": CiderD.reward with document frequencies cached from a training corpus, against
  pycocoevalcap's CiderScorer given the same df and ref_len (processing.metrics.pycocoevalcap_cider);
- "compute_score, batch df": CiderD().compute_score against Cider().compute_score on the flattened batch
  (one entry per candidate, its image's references), df from the batch as pycocoevalcap computes it.
Captions are generated from a small grammar (no caption data ships offline), tokenised already.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modeling_glied.cider import CiderD  # noqa: E402
from processing.metrics import pycocoevalcap_cider  # noqa: E402

_SUBJECTS = ["man", "woman", "dog", "cat", "child", "boy", "girl", "horse", "bird", "player", "person", "group",
             "couple", "train", "bus", "car", "giraffe", "elephant", "zebra", "bear", "plate", "table", "kitchen"]
_ADJECTIVES = ["young", "old", "small", "large", "white", "black", "brown", "red", "blue", "green", "little",
               "big", "tall", "wooden", "yellow", "happy", "empty", "crowded", "dirty", "open"]
_VERBS = ["sitting", "standing", "walking", "running", "riding", "holding", "eating", "playing", "looking",
          "lying", "flying", "jumping", "parked", "driving", "carrying", "watching", "waiting", "grazing"]
_PREPOSITIONS = ["on", "in", "near", "next to", "with", "under", "at", "by", "behind", "in front of", "over"]
_OBJECTS = ["street", "field", "grass", "beach", "water", "snow", "road", "table", "bed", "couch", "room",
            "frisbee", "ball", "umbrella", "kite", "skateboard", "surfboard", "tree", "building", "fence", "pizza",
            "sandwich", "window", "sidewalk", "track", "park", "city", "wave", "hill", "plate of food"]


def make_caption(rng: random.Random) -> str:
    def noun_phrase(nouns):
        words = [rng.choice(["a", "a", "the", "two"])]
        if rng.random() < 0.6:
            words.append(rng.choice(_ADJECTIVES))
        words.append(rng.choice(nouns))
        return words

    words = noun_phrase(_SUBJECTS)
    words += [rng.choice(["is", "", "are"])] if rng.random() < 0.5 else []
    words.append(rng.choice(_VERBS))
    for _ in range(rng.choice([1, 1, 2])):
        words += rng.choice(_PREPOSITIONS).split() + noun_phrase(_OBJECTS)
    return " ".join(w for w in words if w)


def make_data(num_train: int, num_images: int, refs_per_image: int, samples: int, seed: int = 0):
    rng = random.Random(seed)
    train = [[make_caption(rng) for _ in range(refs_per_image)] for _ in range(num_train)]
    refs = [[make_caption(rng) for _ in range(refs_per_image)] for _ in range(num_images)]
    # samples then the greedy caption of each image, contiguous per image
    candidates = [make_caption(rng) for _ in range(num_images) for _ in range(samples + 1)]
    return train, refs, candidates


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, value


def interleaved(ours, theirs, repeats: int):
    """Alternate the two implementations so that both see the same machine load; medians in ms."""
    times = {"ours": ([], []), "theirs": ([], [])}
    values = {}
    for _ in range(repeats):
        for name, fn in (("ours", ours), ("theirs", theirs)):
            wall, cpu, values[name] = timed(fn)
            times[name][0].append(wall * 1e3)
            times[name][1].append(cpu * 1e3)
    medians = {name: (statistics.median(w), statistics.median(c)) for name, (w, c) in times.items()}
    return medians, values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats")
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--refs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=5, help="sampled captions per image (+1 greedy)")
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--min-speedup", type=float, default=0.0, help="exit 1 if a speed-up is below this")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.train_images, args.repeats = 10, 500, 3

    train, refs, candidates = make_data(args.train_images, args.images, args.refs, args.samples)
    per_image = args.samples + 1
    start = time.perf_counter()
    cached = CiderD.from_references(train)
    build = time.perf_counter() - start
    df = cached.document_frequency()
    print(f"batch: {args.images} images x {args.refs} refs, {per_image} candidates each ({len(candidates)}); "
          f"training df over {args.train_images} images ({len(df)} n-grams) built in {build * 1000:.1f} ms")

    flat_gts = {i: refs[i // per_image] for i in range(len(candidates))}
    flat_res = {i: [c] for i, c in enumerate(candidates)}
    settings = [
        (
            "reward, training df",
            lambda: cached.reward(candidates, refs),
            lambda: pycocoevalcap_cider(flat_gts, flat_res, df, cached.ref_len)[1],
        ),
        (
            "compute_score, batch df",
            lambda: CiderD().compute_score(flat_gts, flat_res)[1],
            lambda: pycocoevalcap_cider(flat_gts, flat_res)[1],
        ),
    ]
    speedups = []
    print(f"{'setting':24s} {'CiderD ms':>10s} {'pycocoevalcap ms':>17s} {'speed-up':>9s}   "
          f"(medians of {args.repeats}; wall clock, CPU time in brackets)")
    for name, ours, theirs in settings:
        ours()  # warm-up
        medians, values = interleaved(ours, theirs, args.repeats)
        diff = float(np.max(np.abs(np.asarray(values["ours"]) - np.asarray(values["theirs"]))))
        assert diff < 1e-9, f"{name}: CiderD differs from pycocoevalcap by {diff}"
        (ours_wall, ours_cpu), (ref_wall, ref_cpu) = medians["ours"], medians["theirs"]
        speedups.append(ref_wall / ours_wall)
        print(f"{name:24s} {ours_wall:10.2f} {ref_wall:17.2f} {ref_wall / ours_wall:8.1f}x   "
              f"[{ours_cpu:.2f} vs {ref_cpu:.2f} ms: {ref_cpu / max(ours_cpu, 1e-9):.1f}x]   "
              f"max |diff| {diff:.1e}, mean CIDEr-D {np.mean(values['ours']):.4f}")
    if min(speedups) < args.min_speedup:
        print(f"speed-up {min(speedups):.1f}x is below --min-speedup {args.min_speedup}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
