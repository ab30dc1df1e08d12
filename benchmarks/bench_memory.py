"""Peak memory of training over a COCO-sized feature store against a store a tenth its size: is it flat?

The data path of examples/train.py: `FeatureStore` (Arrow files) -> `CaptioningDataset` (caption records
in memory, features read per image) -> `DataLoader` (a random permutation of the whole store, as the training
sampler draws it) -> `CaptioningCollator` -> a small GLIED (hidden 64: the model is not the point) trained by
cross-entropy, Adam. The same number of steps runs over each store, each run in a fresh subprocess; its peak RSS
comes from `os.wait4` (the child's own `ru_maxrss`). The child also samples /proc/self/status to split the peak
into anonymous memory (the process's own: Python objects, tensors) and file-backed pages (the parts of the
memory-mapped store it touched, which the kernel can drop again, and the shared libraries, ~150 MB of torch).
Flat means the ratio of the peaks is ~1.

Both ways `FeatureStore` reads a row (`--access`) are measured, each over both stores: "pread" (its default: the
arrays are copied out of the files with positioned reads, nothing of them stays mapped) and "mmap" (through the
memory map, as `datasets` reads). Then the speed of random access alone: `--read-rows` rows of the large store in
a random order, read by `FeatureStore.row`, per way: cold (a fresh process, the store's files dropped from the
page cache with posix_fadvise first), warm (the same rows in another fresh process: from the page cache), and
again (the same rows a second time in that process: for "mmap", pages it has mapped already). The page cache of
the stores is dropped before every training run too, so that no run profits from the one before.

The stores are random (`write_synthetic_feature_store`, 36 regions x 2048 float16, ~150 KB an image: COCO's
123,287 images are ~18 GB). Writing the large one takes ~18 minutes on 2 cores, so an existing store at `--store`
(and `--small-store`) is reused; a missing one is written with a progress bar, and an interrupted write resumes
from its last finished shard when the same command runs again. Write them ahead, in the background:

    nohup python benchmarks/bench_memory.py --prepare-only > bench_memory_stores.log 2>&1 &
    python benchmarks/bench_memory.py                # 200 steps of batch 50 over 123,287 and 12,329 images
    python benchmarks/bench_memory.py --quick        # 2,000 vs 200 images, 20 steps (a smoke run)
    python benchmarks/bench_memory.py --store /data/coco-synthetic --num-proc 4 --threads 2
    python benchmarks/bench_memory.py --access pread   # only FeatureStore's default way of reading

Captions: 5 generated captions per image (a vocabulary of `--vocab-size` words), held in memory as training holds
COCO's; they are the part that grows with the number of images (the column `captions`), by design.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

COCO_IMAGES = 123287
STORE_SEED = 0
SHARD_SIZE = 1000
RESULT_PREFIX = "BENCH_MEMORY_RESULT "


# ---------------------------------------------------------------------------------------------------------------
# memory of this process
# ---------------------------------------------------------------------------------------------------------------
def proc_status():
    """{VmRSS, RssAnon, RssFile, RssShmem, VmHWM: bytes} of this process (Linux), or {} elsewhere."""
    values = {}
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return values


class PeakSampler(threading.Thread):
    """Samples `proc_status` every `interval` seconds and keeps the maximum of each value."""

    def __init__(self, interval=0.005):
        super().__init__(daemon=True)
        self.interval, self.peak, self._done = interval, {}, threading.Event()

    def sample(self):
        for key, value in proc_status().items():
            self.peak[key] = max(self.peak.get(key, 0), value)

    def run(self):
        while not self._done.is_set():
            self.sample()
            self._done.wait(self.interval)

    def stop(self):
        self._done.set()
        self.join()
        self.sample()
        return self.peak


# ---------------------------------------------------------------------------------------------------------------
# the child: one training run over one store
# ---------------------------------------------------------------------------------------------------------------
def child(args):
    sampler = PeakSampler()
    sampler.start()
    rss = {"start": proc_status().get("VmRSS", 0)}
    import datasets  # noqa: F401  (imported here, so that `open store` counts the store, not the library)
    import numpy as np
    import torch

    from bench_training import synthetic_captions, synthetic_processor
    from modeling_glied import GLIEDConfig, GLIEDForCaptioning
    from processing.captioning_data import CaptioningCollator, CaptioningDataset, model_inputs
    from processing.feature_stores import FeatureStore

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rss["imports"] = proc_status().get("VmRSS", 0)
    store = FeatureStore(args.store, access=args.access)
    rss["store"] = proc_status().get("VmRSS", 0)
    rng = np.random.default_rng(args.seed)
    records, chunk = [], 1000  # generated a chunk at a time: no transient peak larger than the records
    ids = store.image_ids
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        captions = synthetic_captions(rng, len(part) * args.captions_per_image, args.vocab_size)
        for offset, image_id in enumerate(part):
            k = offset * args.captions_per_image
            records.append({"image_id": image_id, "captions": captions[k:k + args.captions_per_image]})
    dataset = CaptioningDataset(records, store, captions_per_image=args.captions_per_image)
    rss["captions"] = proc_status().get("VmRSS", 0)
    processor = synthetic_processor(args.vocab_size, store.feature_size)
    config = GLIEDConfig(vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                         num_attention_heads=8 if args.hidden_size % 8 == 0 else 1,
                         intermediate_size=4 * args.hidden_size, region_feature_size=store.feature_size)
    model = GLIEDForCaptioning(config).train()
    processor.check_model_config(model.config)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-9)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, drop_last=True, collate_fn=CaptioningCollator(processor),
        sampler=torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(args.seed)),
    )
    if len(loader) == 0:
        raise ValueError(f"--batch-size {args.batch_size} exceeds the {len(dataset)} images of {args.store}")
    rss["model"] = proc_status().get("VmRSS", 0)
    steps, images, start = 0, 0, time.perf_counter()
    while steps < args.steps:  # epochs until the steps are done
        for batch in loader:
            out = model(**model_inputs(batch), decoder_input_ids=batch["decoder_input_ids"], labels=batch["labels"],
                        caption_image_index=batch["caption_image_index"], use_cache=False)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            images += len(batch["image_ids"])
            if steps == args.steps:
                break
    seconds = time.perf_counter() - start
    peak = sampler.stop()
    result = {"access": store.access, "num_images": len(store), "steps": steps, "images_read": images,
              "seconds": seconds, "loss": out.loss.item(), "rss": rss, "peak": peak}
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def read_child(args):
    """Random access alone: `--read-rows` rows of the store in a random order, twice ("first" and "again")."""
    import numpy as np

    from processing.feature_stores import FeatureStore

    store = FeatureStore(args.store, access=args.access)
    rows = np.random.default_rng(args.seed).permutation(len(store))[:args.read_rows]
    store.row(int(rows[0]))  # the code paths (and the pages of their libraries) once, outside the measurement
    sampler = PeakSampler()
    before = proc_status()
    sampler.start()
    result = {"access": store.access, "num_images": len(store), "rows": len(rows), "before": before}
    item = 2 if (store.metadata or {}).get("dtype") == "float16" else 4
    for name in ("first", "again"):
        start, regions = time.perf_counter(), 0
        for row in rows:
            regions += store.row(int(row))["num_regions"]
        result[name] = len(rows) / (time.perf_counter() - start)
    result["feature_bytes"] = regions * store.feature_size * item  # as stored
    result["after"], result["peak"] = proc_status(), sampler.stop()
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------------------------
# the parent: stores, runs, table
# ---------------------------------------------------------------------------------------------------------------
def store_images(path):
    """The number of images of the finished store at `path`, or None when there is none."""
    metadata = Path(path) / "feature_store.json"
    if not metadata.is_file():
        return None
    return json.loads(metadata.read_text())["num_images"]


def ensure_store(path, num_images, args):
    """Reuse the store at `path`, or write it (resuming an interrupted write); returns its number of images."""
    found = store_images(path)
    if found is not None:
        note = "" if found == num_images else f" (not the {num_images} asked for: delete it to rewrite)"
        print(f"reusing the store {path}: {found} images{note}", flush=True)
        return found
    from processing.feature_stores import write_synthetic_feature_store

    features = num_images * args.regions * args.feature_size * (2 if args.dtype == "float16" else 4)
    print(f"writing the store {path}: {num_images} images of {args.regions} x {args.feature_size} {args.dtype} "
          f"({human_size(features)} of features; interrupted, the same command resumes it)", flush=True)
    start = time.perf_counter()
    write_synthetic_feature_store(path, num_images, num_regions=args.regions, feature_size=args.feature_size,
                                  dtype=args.dtype, seed=STORE_SEED, shard_size=SHARD_SIZE, num_proc=args.num_proc,
                                  progress=not args.no_progress)
    print(f"wrote {path} in {time.perf_counter() - start:.0f} s", flush=True)
    return store_images(path)


def human_size(size):
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def directory_size(path):
    return human_size(sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()))


def drop_from_page_cache(path):
    """Ask the kernel to drop the cached pages of the Arrow files of the store at `path` (where it can be asked)."""
    if not hasattr(os, "posix_fadvise"):
        return
    for file in Path(path).rglob("*.arrow"):
        descriptor = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def run_child(store, args, access, mode="--child", cold=True):
    """One run (`mode`: "--child" trains, "--read-child" reads rows) over `store` in a fresh interpreter, the store
    dropped from the page cache first when `cold`: (its result dict, its peak RSS in bytes)."""
    command = [sys.executable, os.path.abspath(__file__), mode, "--store", str(store), "--access", access,
               "--steps", str(args.steps), "--read-rows", str(args.read_rows), "--batch-size", str(args.batch_size),
               "--hidden-size", str(args.hidden_size), "--vocab-size", str(args.vocab_size),
               "--captions-per-image", str(args.captions_per_image), "--seed", str(args.seed)]
    if cold:
        drop_from_page_cache(store)
    if args.threads:
        command += ["--threads", str(args.threads)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    process.stdout.close()
    _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage (RUSAGE_CHILDREN would be a max over all)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"the {mode} run over {store} failed (exit {process.returncode}):\n{output[-4000:]}")
    lines = [line for line in output.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise RuntimeError(f"the {mode} run over {store} printed no result:\n{output[-4000:]}")
    max_rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux
    return json.loads(lines[-1][len(RESULT_PREFIX):]), max_rss


def default_store(num_images, args):
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "glied" / "bench_memory"
    return root / f"synthetic-{num_images}x{args.regions}x{args.feature_size}-{args.dtype}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 vs 200 images, 20 steps")
    parser.add_argument("--store", default=None,
                        help="the large store (default ~/.cache/glied/bench_memory/synthetic-<images>x<regions>x...)")
    parser.add_argument("--small-store", default=None, help="the small store (default: beside --store)")
    parser.add_argument("--num-images", type=int, default=None,
                        help=f"images of the large store when it is written (default {COCO_IMAGES}, COCO)")
    parser.add_argument("--fraction", type=float, default=0.1, help="size of the small store (default 0.1)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per store (default 200)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--regions", type=int, default=36, help="regions per image when a store is written")
    parser.add_argument("--feature-size", type=int, default=2048, help="feature width when a store is written")
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="storage dtype")
    parser.add_argument("--num-proc", type=int, default=1, help="processes writing a store")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--access", default="pread,mmap",
                        help="FeatureStore's ways of reading rows to measure, comma-separated (default pread,mmap)")
    parser.add_argument("--read-rows", type=int, default=None,
                        help="rows of the large store read at random to time random access (default 5000; 0: none)")
    parser.add_argument("--prepare-only", action="store_true", help="write (or check) the stores and stop")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar while writing a store")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--read-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    if args.read_child:
        return read_child(args)
    from processing.feature_stores import FEATURE_STORE_ACCESS

    accesses = [access.strip() for access in args.access.split(",") if access.strip()]
    if not accesses or any(access not in FEATURE_STORE_ACCESS for access in accesses):
        raise ValueError(f"--access must list some of {', '.join(FEATURE_STORE_ACCESS)}, got {args.access!r}")
    if not 0 < args.fraction < 1:
        raise ValueError(f"--fraction must lie in (0, 1), got {args.fraction}")
    num_images = args.num_images or (2000 if args.quick else COCO_IMAGES)
    args.steps = args.steps or (20 if args.quick else 200)
    if args.read_rows is None:
        args.read_rows = 100 if args.quick else 5000

    store = Path(args.store) if args.store else default_store(num_images, args)
    num_images = ensure_store(store, num_images, args)
    small_images = max(1, round(args.fraction * num_images))
    small_store = Path(args.small_store) if args.small_store else (
        store.with_name(f"{store.name}-{small_images}") if args.store else default_store(small_images, args))
    small_images = ensure_store(small_store, small_images, args)
    if args.prepare_only:
        return

    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}, threads {args.threads or 'default'}")
    print(f"{args.steps} steps of batch {args.batch_size} images x {args.captions_per_image} captions per store, "
          f"hidden {args.hidden_size}, vocabulary {args.vocab_size}, DataLoader in the process (num_workers 0); "
          f"page cache of the store dropped before each run: {'yes' if hasattr(os, 'posix_fadvise') else 'no'}")
    mb = 1 / 2 ** 20
    for access in accesses:
        results = [(path, *run_child(path, args, access)) for path in (store, small_store)]
        print(f"\n### training, FeatureStore(access={access!r})\n")
        print("| store | images | on disk | imports | open store | captions | before step 1 | peak RSS "
              "| peak anon | peak file-backed | images read | s/step |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for path, result, max_rss in results:
            rss, peak = result["rss"], result["peak"]
            print(f"| {path.name} | {result['num_images']:,} | {directory_size(path)} | "
                  f"{rss['imports'] * mb:.0f} MB | +{(rss['store'] - rss['imports']) * mb:.0f} MB | "
                  f"+{(rss['captions'] - rss['store']) * mb:.0f} MB | {rss['model'] * mb:.0f} MB | "
                  f"{max_rss * mb:.0f} MB | {peak.get('RssAnon', 0) * mb:.0f} MB | "
                  f"{peak.get('RssFile', 0) * mb:.0f} MB | {result['images_read']:,} | "
                  f"{result['seconds'] / result['steps']:.2f} |", flush=True)
        (_, big, big_rss), (_, small, small_rss) = results
        ratio_anon = big["peak"].get("RssAnon", 0) / max(small["peak"].get("RssAnon", 0), 1)
        ratio_file = big["peak"].get("RssFile", 0) / max(small["peak"].get("RssFile", 0), 1)
        used = {big["access"], small["access"]} - {access}
        note = f" (read the {used.pop()} way: FeatureStore fell back)" if used else ""
        print(f"\npeak RSS, {big['num_images']:,} / {small['num_images']:,} images: {big_rss / small_rss:.2f}x "
              f"(anonymous {ratio_anon:.2f}x, file-backed {ratio_file:.2f}x); flat is ~1{note}")

    if args.read_rows > 0:
        rows = min(args.read_rows, num_images)
        print(f"\n### random access: FeatureStore.row over {store.name}, {rows:,} rows in a random order; cold: store "
              f"dropped from the page cache, warm: the same rows in a fresh process, again: a second time in it\n")
        print("| access | cold rows/s | warm rows/s | again rows/s | warm MB/s (stored features) | RSS before "
              "| RSS growth (cold) | peak file-backed (cold) |")
        print("|---|---|---|---|---|---|---|---|")
        for access in accesses:
            cold, _ = run_child(store, args, access, mode="--read-child")
            warm, _ = run_child(store, args, access, mode="--read-child", cold=False)
            before = cold["before"].get("VmRSS", 0)
            growth = cold["after"].get("VmRSS", 0) - before
            print(f"| {cold['access']} | {cold['first']:,.0f} | {warm['first']:,.0f} | {warm['again']:,.0f} | "
                  f"{warm['first'] * warm['feature_bytes'] / warm['rows'] / 1e6:,.0f} | {before * mb:.0f} MB | "
                  f"{growth * mb:+.0f} MB | {cold['peak'].get('RssFile', 0) * mb:.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
