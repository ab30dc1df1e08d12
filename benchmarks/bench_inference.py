"""Captioning speed at the paper's size: images/s, tokens/s and the share of the machine's matmul peak.

Paper (one GTX 1080 Ti): GLIED 34.5 images/s, Base 37.9, Up-Down 14.8.

Everything is measured side by side in one run, so the ratios hold on a shared, noisy machine:
- `cache`: `generate()` with the transformers cache (self-attention keys/values, image memories projected once);
- `no cache`: `generate(use_cache=False)`, every step re-runs the decoder over the whole prefix;
- `recompute`: a plain loop that re-runs the whole model (encoder too) on the prefix at every step (greedy only).

    python benchmarks/bench_inference.py            # the full table (several minutes on 2 cores)
    python benchmarks/bench_inference.py --quick    # batch 10 only, one repeat
    python benchmarks/bench_inference.py --device cuda --dtype bfloat16   # on a GPU
"""

import argparse
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from modeling_glied import GLIEDConfig, GLIEDForCaptioning

REGIONS, ATTRIBUTES, VOCAB, WORDS = 36, 20, 10000, 16


def paper_inputs(batch, device, dtype):
    g = torch.Generator().manual_seed(0)
    return dict(
        region_features=torch.randn(batch, REGIONS, 2048, generator=g).to(device, dtype),
        region_mask=torch.ones(batch, REGIONS, dtype=torch.long, device=device),
        attribute_ids=torch.randint(4, VOCAB, (batch, ATTRIBUTES), generator=g).to(device),
        attribute_mask=torch.ones(batch, ATTRIBUTES, dtype=torch.long, device=device),
    )


def recompute_greedy(model, inputs, words):
    """Greedy decoding with no reuse at all: the full model on the whole prefix at every step."""
    batch = inputs["region_features"].shape[0]
    ids = torch.full((batch, 1), model.config.bos_token_id, dtype=torch.long, device=inputs["region_features"].device)
    for _ in range(words):
        logits = model(**inputs, decoder_input_ids=ids, use_cache=False).logits[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids


def run(model, inputs, mode, beams):
    if mode == "recompute":
        return recompute_greedy(model, inputs, WORDS)
    return model.generate(**inputs, num_beams=beams, do_sample=False, max_new_tokens=WORDS, min_new_tokens=WORDS,
                          use_cache=(mode == "cache"))


def timed(fn, repeats, device):
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak(device, dtype, size=2048, repeats=5):
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, repeats, device)
    return 2 * size ** 3 / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,10,50)")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    batches = [int(b) for b in args.batches.split(",")] if args.batches else ([10] if args.quick else [1, 10, 50])
    repeats = args.repeats or (1 if args.quick else 3)
    torch.manual_seed(0)
    peak = matmul_peak(args.device, dtype)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {args.device}, {args.dtype}")
    print(f"matmul peak (2048^3): {peak / 1e9:.1f} GFLOP/s")
    print(f"{WORDS} words per caption, {REGIONS} regions x 2048, {ATTRIBUTES} attribute words, vocabulary {VOCAB}\n")
    print("| model | decoding | batch | mode | images/s | tokens/s | GFLOP/s | share of peak | vs cache |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, config in (("GLIED", GLIEDConfig(vocab_size=VOCAB)), ("Base", GLIEDConfig.base(vocab_size=VOCAB))):
        model = GLIEDForCaptioning(config).to(args.device, dtype).eval()
        for beams in (1, 3):
            for batch in batches:
                inputs = paper_inputs(batch, args.device, dtype)
                modes = ["cache", "no cache"] + (["recompute"] if beams == 1 else [])
                if args.quick and name == "Base":
                    modes = ["cache"]
                cache_seconds = None
                for mode in modes:
                    with torch.inference_mode():
                        seconds = timed(lambda: run(model, inputs, mode, beams), repeats, args.device)
                        with FlopCounterMode(display=False) as counter:
                            run(model, inputs, mode, beams)
                    flops = counter.get_total_flops()
                    cache_seconds = cache_seconds or seconds
                    print(f"| {name} | {'greedy' if beams == 1 else f'beam {beams}'} | {batch} | {mode} | "
                          f"{batch / seconds:.1f} | {batch * beams * WORDS / seconds:.0f} | {flops / seconds / 1e9:.1f} | "
                          f"{flops / seconds / peak:.0%} | {seconds / cache_seconds:.2f}x slower |", flush=True)


if __name__ == "__main__":
    main()
