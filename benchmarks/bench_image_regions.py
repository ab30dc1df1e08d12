"""Speed of region feature extraction on the real photographs that ship inside installable packages.

Measures images per second of
  1. the default extractor (ssd-mobilenet-coco detector + efficientnet-lite0 backbone),
  2. the same detector with the weight-free pixels backbone,
  3. the synthetic-scene extractor (components detector + pixels backbone) on rendered flat-colour shapes,
after one warm-up pass (the first pass of each input shape pays for kernel set-up).

Images: scikit-image `skimage.data` photographs, scikit-learn sample images, matplotlib's grace_hopper.jpg,
Debian darknet / opencv-doc photos, whichever are installed.

    python benchmarks/bench_image_regions.py [--repeats 3] [--batch_size 8] [--image_size 448] [--device cpu]
        [--threads N]

On a shared or loaded machine, pass --threads 1: oversubscribed OpenMP threads spin and slow torch tenfold.
"""

from __future__ import annotations

import argparse
import glob
import os
import shlex
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from processing.image_regions import RegionFeatureExtractor, attribute_candidates  # noqa: E402

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "hubble_deep_field", "camera",
                  "coins", "clock", "immunohistochemistry", "retina", "moon")


def packaged_photos() -> list[tuple[str, np.ndarray | str]]:
    images: list[tuple[str, np.ndarray | str]] = []
    try:
        from skimage import data
        for name in SKIMAGE_PHOTOS:
            try:
                image = getattr(data, name)()
            except Exception:  # noqa: BLE001 - a photo that needs a download is skipped
                continue
            images.append((f"skimage.{name}", image[0] if isinstance(image, tuple) else image))
    except ImportError:
        pass
    try:
        from sklearn.datasets import load_sample_images
        sample = load_sample_images()
        images += [(f"sklearn.{os.path.basename(n)}", im) for n, im in zip(sample.filenames, sample.images)]
    except ImportError:
        pass
    try:
        import matplotlib
        hopper = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
        if os.path.isfile(hopper):
            images.append(("matplotlib.grace_hopper", hopper))
    except ImportError:
        pass
    for pattern in ("/usr/share/darknet/data/*.jpg", "/usr/share/doc/opencv-doc/examples/data/*.jpg"):
        images += [(path, path) for path in sorted(glob.glob(pattern))]
    return images


def rendered_scenes(count: int, seed: int = 0) -> list[np.ndarray]:
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(count):
        image = Image.new("RGB", (224, 224), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 5))):
            x, y = rng.integers(0, 160, 2)
            size = int(rng.integers(20, 60))
            colour = tuple(int(c) for c in rng.integers(0, 200, 3))
            kind = rng.integers(0, 3)
            if kind == 0:
                draw.rectangle([x, y, x + size, y + size], fill=colour)
            elif kind == 1:
                draw.ellipse([x, y, x + size, y + size], fill=colour)
            else:
                draw.polygon([(x, y + size), (x + size, y + size), (x + size // 2, y)], fill=colour)
        scenes.append(np.asarray(image))
    return scenes


def images_per_second(extractor, images, repeats: int, batch_size: int) -> tuple[str, list[dict]]:
    """Wall-clock images/s and CPU milliseconds per image (all threads) after a warm-up pass."""
    outputs = extractor(images, batch_size=batch_size, progress=False)  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        extractor(images, batch_size=batch_size, progress=False)
    count = repeats * len(images)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return f"{count / wall:.2f} images/s ({1000 * cpu / count:.0f} CPU-ms/image)", outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=448)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch and OpenCV CPU threads (0: their defaults)")
    args = parser.parse_args()
    print("command:", "python " + " ".join(shlex.quote(a) for a in sys.argv))

    import torch
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        try:
            import cv2
            cv2.setNumThreads(args.threads)  # OpenCV DNN runs the detector with its own thread pool
        except ImportError:
            pass
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"{os.cpu_count()} CPUs")
    named = packaged_photos()
    if not named:
        raise SystemExit("no packaged photographs found (pip install scikit-image)")
    images = [image for _, image in named]
    print(f"{len(images)} photographs: {', '.join(name for name, _ in named)}")

    default = RegionFeatureExtractor(image_size=args.image_size, device=args.device)
    speed, outputs = images_per_second(default, images, args.repeats, args.batch_size)
    regions = np.mean([len(o["labels"]) for o in outputs])
    print(f"\n[1] {default.detector_name} + {default.backbone_name} (F={default.feature_size}, "
          f"image_size={args.image_size}): {speed}, {regions:.1f} regions/image")
    for (name, _), output in zip(named, outputs):
        print(f"    {name:32s} {output['image_size']}  {', '.join(attribute_candidates(output)) or '-'}")

    pixels = RegionFeatureExtractor(backbone="pixels", image_size=args.image_size)
    speed, _ = images_per_second(pixels, images, args.repeats, args.batch_size)
    print(f"[2] {pixels.detector_name} + pixels (F={pixels.feature_size}): {speed}")

    scenes = rendered_scenes(64)
    synthetic = RegionFeatureExtractor(detector="components", backbone="pixels")
    speed, outputs = images_per_second(synthetic, scenes, args.repeats, args.batch_size)
    regions = np.mean([len(o["labels"]) for o in outputs])
    print(f"[3] components + pixels on 64 rendered 224x224 scenes: {speed}, "
          f"{regions:.1f} regions/image")


if __name__ == "__main__":
    main()
