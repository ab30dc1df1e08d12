"""Training speed at the paper's size: cross-entropy and self-critical (SCST) images/s, GLIED and Base.

Paper size (GLIEDConfig() defaults): hidden 512, vocabulary 10,000, 36 regions x 2048 with boxes, 20 attribute
words, 5 captions of 16 words per image. Random inputs, untrained models, Adam (betas 0.9/0.98 as
examples/train.py), gradient clipping at 1.0. Everything is measured side by side in one run (the modes interleaved,
the best of the repeats kept), so the ratios hold on a shared, noisy machine:

- cross-entropy, one step = forward + backward + clip + Adam step over B images x 5 captions:
  `per image`: the encoder once per image, the captions pointing at their image with `caption_image_index`
  (what CaptioningCollator feeds examples/train.py); `repeated`: the image tensors repeated once per caption (the
  naive way, 5 x the encoder work; the repetition is done before the clock starts, so only the model is timed);
- SCST, one step = `self_critical_loss` (5 samples per image, CIDEr-D reward with document frequencies of
  `--reference-images` generated training images, `max_new_tokens=16`) + backward + clip + Adam step, with the
  `greedy` and the `mean` baseline. The step is split into `sample` (generate: the 5 samples, plus the greedy
  caption for the greedy baseline), `reward` (batch_decode + CiderD.reward), `log-probs` (the teacher-forced
  forward of the samples) and `backward+step`. Sampled lengths vary: an untrained model rarely says `<eos>`, so
  nearly every sample runs the full 16 words (column `words/sample`); a trained one stops earlier.

    python benchmarks/bench_training.py               # batches 10 and 50, 3 repeats (minutes at 2 cores)
    python benchmarks/bench_training.py --quick       # batch 10 only, one repeat
    python benchmarks/bench_training.py --device cuda --dtype bfloat16   # a GPU, bfloat16 autocast
    python benchmarks/bench_training.py --threads 1   # on a shared machine: oversubscribed threads spin

`--hidden-size`, `--vocab-size`, `--regions`, `--feature-size`, `--reference-images` shrink it (smoke tests).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modeling_glied import GLIEDConfig, GLIEDForCaptioning  # noqa: E402
from modeling_glied.cider import CiderD  # noqa: E402
from modeling_glied.scst import caption_token_mask, self_critical_loss  # noqa: E402
from processing import GLIEDProcessor  # noqa: E402
from processing.tokenization_glied import SPECIAL_TOKENS, GLIEDTokenizer, split_caption  # noqa: E402

REGIONS, FEATURES, ATTRIBUTES, VOCAB, WORDS, CAPTIONS, SAMPLES = 36, 2048, 20, 10000, 16, 5, 5


# ---------------------------------------------------------------------------------------------------------------
# synthetic vocabulary, captions and inputs (bench_memory.py uses these too)
# ---------------------------------------------------------------------------------------------------------------
def synthetic_processor(vocab_size, region_feature_size=FEATURES, **settings):
    """A processor whose vocabulary is the special tokens and the words "w4" .. "w<vocab_size - 1>": word "w<i>"
    has id i, so random ids decode to words and `synthetic_captions` encode without `<unk>`."""
    words = list(SPECIAL_TOKENS) + [f"w{i}" for i in range(len(SPECIAL_TOKENS), vocab_size)]
    tokenizer = GLIEDTokenizer(vocab={word: index for index, word in enumerate(words)})
    return GLIEDProcessor(tokenizer, region_feature_size=region_feature_size, **settings)


def synthetic_captions(rng, count, vocab_size, min_words=8, max_words=WORDS):
    """`count` captions of the words of `synthetic_processor`, Zipf-distributed like real caption words (the
    frequent few and a long tail), `min_words`..`max_words` words each."""
    ranks = np.arange(1, vocab_size - len(SPECIAL_TOKENS) + 1)
    probabilities = 1.0 / ranks
    probabilities /= probabilities.sum()
    lengths = rng.integers(min_words, max_words + 1, size=count)
    ids = rng.choice(ranks.size, size=int(lengths.sum()), p=probabilities) + len(SPECIAL_TOKENS)
    words = np.char.add("w", ids.astype(str)).tolist()
    ends = np.cumsum(lengths)
    return [" ".join(words[end - length:end]) for end, length in zip(ends.tolist(), lengths.tolist())]


def image_inputs(batch, regions, features, vocab_size, device):
    """Model inputs of `batch` random images (float32, as the collator makes them; autocast casts them)."""
    g = torch.Generator().manual_seed(0)
    corners = torch.rand(batch, regions, 2, 2, generator=g).sort(dim=2).values  # [[x1, y1], [x2, y2]], x1 <= x2
    return dict(
        region_features=torch.randn(batch, regions, features, generator=g).to(device),
        region_mask=torch.ones(batch, regions, dtype=torch.long, device=device),
        region_boxes=corners.reshape(batch, regions, 4).to(device),
        attribute_ids=torch.randint(len(SPECIAL_TOKENS), vocab_size, (batch, ATTRIBUTES), generator=g).to(device),
        attribute_mask=torch.ones(batch, ATTRIBUTES, dtype=torch.long, device=device),
    )


def caption_inputs(config, batch, device):
    """`CAPTIONS` captions of `WORDS` random words per image: decoder_input_ids, labels, caption_image_index."""
    g = torch.Generator().manual_seed(1)
    words = torch.randint(len(SPECIAL_TOKENS), config.vocab_size, (batch * CAPTIONS, WORDS), generator=g)
    bos = torch.full((batch * CAPTIONS, 1), config.bos_token_id)
    eos = torch.full((batch * CAPTIONS, 1), config.eos_token_id)
    return dict(
        decoder_input_ids=torch.cat([bos, words], dim=1).to(device),
        labels=torch.cat([words, eos], dim=1).to(device),
        caption_image_index=torch.arange(batch, device=device).repeat_interleave(CAPTIONS),
    )


# ---------------------------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------------------------
class Clock:
    """Accumulates seconds per part; on a GPU every reading waits for the queued kernels."""

    def __init__(self, device):
        self.device = device
        self.parts = {}

    def now(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter()

    @contextlib.contextmanager
    def part(self, name):
        start = self.now()
        try:
            yield
        finally:
            self.parts[name] = self.parts.get(name, 0.0) + self.now() - start

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            with self.part(name):
                return fn(*args, **kwargs)

        return timed


def optimizer_step(model, optimizer, loss):
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def xe_step(model, optimizer, images, repeated, captions, mode, autocast):
    """One cross-entropy step over B images x 5 captions; returns {part: seconds} (just "total")."""
    clock = Clock(str(images["region_features"].device))
    with clock.part("total"):
        with autocast():
            if mode == "per image":
                out = model(**images, **captions, use_cache=False)
            else:
                out = model(**repeated, decoder_input_ids=captions["decoder_input_ids"], labels=captions["labels"],
                            use_cache=False)
        optimizer_step(model, optimizer, out.loss)
    return clock.parts


def scst_step(model, optimizer, images, references, cider, processor, baseline, autocast):
    """One SCST step; returns {part: seconds} with "total", "sample", "reward", "log-probs", "backward+step" and
    "words" (mean sampled words per sample, not a time)."""
    clock = Clock(str(images["region_features"].device))

    def decode(ids):
        return [" ".join(split_caption(c)) for c in processor.batch_decode(ids)]

    model.generate = clock.wrap("sample", model.generate)  # self_critical_loss samples through model.generate
    try:
        with clock.part("total"):
            with clock.part("loss"), autocast():
                out = self_critical_loss(model, images, references, clock.wrap("reward", cider.reward),
                                         clock.wrap("reward", decode), num_samples=SAMPLES, baseline=baseline,
                                         max_new_tokens=WORDS)
            with clock.part("backward+step"):
                optimizer_step(model, optimizer, out.loss)
    finally:
        del model.generate
    parts = clock.parts
    parts["log-probs"] = parts.pop("loss") - parts["sample"] - parts["reward"]
    mask = caption_token_mask(out.sequences, model.config.eos_token_id, model.config.pad_token_id)
    parts["words"] = mask.sum().item() / mask.shape[0]
    return parts


def best_of(step_fns, repeats):
    """Run every step function once (warm-up), then `repeats` rounds, interleaved; per function the parts of its
    fastest round."""
    for fn in step_fns.values():
        fn()
    best = {}
    for _ in range(repeats):
        for name, fn in step_fns.items():
            parts = fn()
            if name not in best or parts["total"] < best[name]["total"]:
                best[name] = parts
    return best


# ---------------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 10 only, one repeat")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="autocast dtype (the weights and the Adam state stay float32)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes in images (default 10,50)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds, the best kept (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--parts", default="xe,scst", help="what to time: xe, scst or both (default xe,scst)")
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--vocab-size", type=int, default=VOCAB)
    parser.add_argument("--regions", type=int, default=REGIONS)
    parser.add_argument("--feature-size", type=int, default=FEATURES)
    parser.add_argument("--reference-images", type=int, default=5000,
                        help="generated training images (5 references each) the CIDEr-D document frequencies count")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    if not parts <= {"xe", "scst"}:
        raise ValueError(f"--parts takes xe and/or scst, got {args.parts!r}")
    batches = [int(b) for b in args.batches.split(",")] if args.batches else ([10] if args.quick else [10, 50])
    repeats = args.repeats or (1 if args.quick else 3)
    dtype = getattr(torch, args.dtype)
    device_type = torch.device(args.device).type

    def autocast():
        return torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32)

    torch.manual_seed(0)
    sizes = dict(vocab_size=args.vocab_size, hidden_size=args.hidden_size, region_feature_size=args.feature_size,
                 num_attention_heads=8 if args.hidden_size % 8 == 0 else 1, intermediate_size=4 * args.hidden_size)
    models = (("GLIED", GLIEDConfig(**sizes)), ("Base", GLIEDConfig.base(**sizes)))
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {args.device}, {args.dtype}"
          f"{' autocast' if dtype != torch.float32 else ''}, best of {repeats}")
    print(f"hidden {args.hidden_size}, vocabulary {args.vocab_size}, {args.regions} regions x {args.feature_size} "
          f"+ boxes, {ATTRIBUTES} attribute words, {CAPTIONS} captions of {WORDS} words per image; Adam, clip 1.0")

    if "xe" in parts:
        print("\n### cross-entropy: forward + backward + Adam step, images/s (5 captions each)\n")
        print("| model | batch | encoder | images/s | captions/s | ms/step | vs per image |")
        print("|---|---|---|---|---|---|---|")
        for name, config in models:
            model = GLIEDForCaptioning(config).to(args.device).train()
            optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-9)
            for batch in batches:
                images = image_inputs(batch, args.regions, args.feature_size, args.vocab_size, args.device)
                captions = caption_inputs(config, batch, args.device)
                repeated = {k: v[captions["caption_image_index"]] for k, v in images.items()}
                modes = ("per image", "repeated")
                best = best_of({mode: (lambda mode=mode: xe_step(model, optimizer, images, repeated, captions, mode,
                                                                 autocast)) for mode in modes}, repeats)
                for mode in modes:
                    seconds = best[mode]["total"]
                    print(f"| {name} | {batch} | {mode} | {batch / seconds:.1f} | {batch * CAPTIONS / seconds:.0f} | "
                          f"{1000 * seconds:.0f} | {seconds / best['per image']['total']:.2f}x time |", flush=True)
            del model, optimizer

    if "scst" in parts:
        rng = np.random.default_rng(0)
        corpus = [synthetic_captions(rng, CAPTIONS, args.vocab_size) for _ in range(args.reference_images)]
        start = time.perf_counter()
        cider = CiderD.from_references(corpus)
        print(f"\n### SCST: self_critical_loss ({SAMPLES} samples, max_new_tokens {WORDS}) + backward + Adam step\n")
        print(f"CIDEr-D document frequencies of {args.reference_images} generated images x {CAPTIONS} references "
              f"(Zipf words): {time.perf_counter() - start:.1f} s, once\n")
        print("| model | batch | baseline | images/s | ms/step | sample | reward | log-probs | backward+step "
              "| words/sample |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        processor = synthetic_processor(args.vocab_size, args.feature_size)
        for name, config in models:
            model = GLIEDForCaptioning(config).to(args.device).train()
            optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-9)
            for batch in batches:
                images = image_inputs(batch, args.regions, args.feature_size, args.vocab_size, args.device)
                references = [corpus[i % len(corpus)] for i in range(batch)]
                baselines = ("greedy", "mean")
                best = best_of({b: (lambda b=b: scst_step(model, optimizer, images, references, cider, processor, b,
                                                          autocast)) for b in baselines}, repeats)
                for baseline in baselines:
                    p = best[baseline]
                    split = " | ".join(f"{1000 * p[k]:.0f} ms ({p[k] / p['total']:.0%})"
                                       for k in ("sample", "reward", "log-probs", "backward+step"))
                    print(f"| {name} | {batch} | {baseline} | {batch / p['total']:.1f} | {1000 * p['total']:.0f} | "
                          f"{split} | {p['words']:.1f} |", flush=True)
            del model, optimizer


if __name__ == "__main__":
    main()
