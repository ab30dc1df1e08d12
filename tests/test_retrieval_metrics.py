import numpy as np
import pytest

from processing.retrieval_metrics import (
    box_iou,
    coco_retrieval_metrics,
    fold_averaged_retrieval_metrics,
    image_annotation_ranks,
    image_search_ranks,
    ranks_to_metrics,
    region_phrase_grounding_accuracy,
    retrieval_metrics,
)

# 3 images x 6 sentences, 2 captions per image (sentence j belongs to image j // 2)
SIMS = np.array([
    #  s0   s1   s2   s3   s4   s5
    [0.9, 0.1, 0.8, 0.2, 0.0, 0.3],  # image 0: best true s0 (0.9) -> rank 0
    [0.7, 0.6, 0.5, 0.1, 0.4, 0.3],  # image 1: best true s2 (0.5), wrong 0.7, 0.6 above -> rank 2
    [0.2, 0.3, 0.9, 0.8, 0.1, 0.7],  # image 2: best true s5 (0.7), wrong 0.9, 0.8 above -> rank 2
])


def test_annotation_ranks_hand_computed():
    assert image_annotation_ranks(SIMS, captions_per_image=2).tolist() == [0, 2, 2]


def test_search_ranks_hand_computed():
    # s0 true img0 0.9 max -> 0; s1 true img0 0.1 < 0.6, 0.3 -> 2; s2 true img1 0.5 < 0.8, 0.9 -> 2;
    # s3 true img1 0.1 < 0.2, 0.8 -> 2; s4 true img2 0.1 < 0.4 (0.0 below) -> 1; s5 true img2 0.7 max -> 0
    assert image_search_ranks(SIMS, captions_per_image=2).tolist() == [0, 2, 2, 2, 1, 0]


def test_metrics_hand_computed():
    result = retrieval_metrics(SIMS, captions_per_image=2)
    annotation, search = result["annotation"], result["search"]
    assert annotation["r1"] == pytest.approx(100 / 3)
    assert annotation["r5"] == annotation["r10"] == 100.0
    assert annotation["medr"] == 3.0  # floor(median([0, 2, 2])) + 1
    assert annotation["meanr"] == pytest.approx(4 / 3 + 1)
    assert search["r1"] == pytest.approx(200 / 6)
    assert search["medr"] == 2.0  # floor(median([0, 0, 1, 2, 2, 2]) = 1.5) + 1
    assert search["meanr"] == pytest.approx(7 / 6 + 1)
    assert result["rsum"] == pytest.approx(100 / 3 + 200 + 200 / 6 + 200)


def test_median_floor_convention():
    assert ranks_to_metrics([0, 0, 1, 2])["medr"] == 1.0  # median 0.5 -> floor 0 -> 1
    assert ranks_to_metrics([0, 3])["medr"] == 2.0  # median 1.5 -> floor 1 -> 2
    assert ranks_to_metrics([4, 9, 20])["r5"] == pytest.approx(100 / 3)


def test_explicit_sentence_image_matches_default_layout():
    shuffled = np.array([3, 0, 5, 1, 4, 2])
    owner = np.arange(6)[shuffled] // 2
    assert retrieval_metrics(SIMS[:, shuffled], sentence_image=owner) == retrieval_metrics(SIMS, captions_per_image=2)


def test_uneven_captions_via_sentence_image():
    sims = np.array([[0.9, 0.8, 0.1], [0.2, 0.3, 0.5]])
    owner = np.array([0, 0, 1])
    assert image_annotation_ranks(sims, sentence_image=owner).tolist() == [0, 0]
    assert image_search_ranks(sims, sentence_image=owner).tolist() == [0, 0, 0]


def test_ties_are_pessimistic():
    sims = np.zeros((4, 8))
    assert image_annotation_ranks(sims).tolist() == [6] * 4  # 6 wrong sentences tie with the true ones
    assert image_search_ranks(sims).tolist() == [3] * 8
    result = retrieval_metrics(sims)
    assert result["annotation"]["r1"] == 0.0 and result["search"]["r1"] == 0.0
    # one tie with a wrong sentence pushes the true caption down one place
    tied = np.array([[1.0, 1.0], [0.0, 0.5]])
    assert image_annotation_ranks(tied, captions_per_image=1).tolist() == [1, 0]


def test_perfect_similarity():
    n, k = 20, 5
    sims = np.repeat(np.eye(n), k, axis=1) + 0.01 * np.random.default_rng(0).random((n, n * k))
    result = retrieval_metrics(sims, captions_per_image=k)
    for direction in ("annotation", "search"):
        assert result[direction] == {"r1": 100.0, "r5": 100.0, "r10": 100.0, "medr": 1.0, "meanr": 1.0}
    assert result["rsum"] == 600.0


def test_random_similarity_near_chance():
    n, k = 500, 5
    sims = np.random.default_rng(1).standard_normal((n, n * k))
    result = retrieval_metrics(sims, captions_per_image=k)
    # search: the true image is uniform among 500 -> R@10 ~ 2 %, median rank ~ 250
    assert result["search"]["r10"] == pytest.approx(2.0, abs=1.0)
    assert result["search"]["medr"] == pytest.approx(250, abs=30)
    # annotation: best of 5 true among 2500 -> R@10 ~ 1 - (1 - 10/2500)^5 ~ 2 %
    assert result["annotation"]["r10"] == pytest.approx(2.0, abs=1.5)


def test_fold_averaging():
    rng = np.random.default_rng(2)
    sims = rng.standard_normal((6, 12))  # 6 images x 2 captions, 3 folds of 2 images
    folds = fold_averaged_retrieval_metrics(sims, n_folds=3, captions_per_image=2)
    expected = [retrieval_metrics(sims[2 * f:2 * f + 2, 4 * f:4 * f + 4], captions_per_image=2) for f in range(3)]
    assert folds["folds"] == expected
    for key in ("r1", "r5", "r10", "medr", "meanr"):
        assert folds["annotation"][key] == pytest.approx(np.mean([e["annotation"][key] for e in expected]))
        assert folds["search"][key] == pytest.approx(np.mean([e["search"][key] for e in expected]))
    # off-fold similarities do not matter for the folds
    boosted = sims.copy()
    boosted[:2, 4:] = 100.0
    assert fold_averaged_retrieval_metrics(boosted, n_folds=3, captions_per_image=2)["folds"] == expected


def test_coco_1k_and_5k():
    rng = np.random.default_rng(3)
    sims = rng.standard_normal((40, 200))
    sims[np.arange(200) // 5, np.arange(200)] += 2.5  # informative but imperfect
    result = coco_retrieval_metrics(sims, captions_per_image=5, fold_size=8)
    assert len(result["1k"]["folds"]) == 5
    assert result["5k"] == retrieval_metrics(sims, captions_per_image=5)
    # fewer distractors per fold -> 1K recall at least as good as 5K here
    assert result["1k"]["search"]["r1"] >= result["5k"]["search"]["r1"]
    with pytest.raises(ValueError, match="fold_size"):
        coco_retrieval_metrics(sims, fold_size=7)


@pytest.mark.parametrize("kwargs, message", [
    ({"similarity": np.zeros((3,))}, "2-D"),
    ({"similarity": np.zeros((3, 7))}, "not a multiple"),
    ({"similarity": np.zeros((3, 6)), "captions_per_image": 3}, "expected n_images"),
    ({"similarity": np.zeros((3, 6)), "captions_per_image": 0}, "captions_per_image"),
    ({"similarity": np.zeros((2, 3)), "sentence_image": np.array([0, 1])}, r"shape \(3,\)"),
    ({"similarity": np.zeros((2, 3)), "sentence_image": np.array([0, 1, 2])}, r"\[0, 2\)"),
    ({"similarity": np.zeros((2, 3)), "sentence_image": np.array([0, 0, 0])}, "without any sentence"),
    ({"similarity": np.array([[np.nan, 0.0]])}, "NaN"),
])
def test_retrieval_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(**kwargs)


def test_grounding_index_variant():
    scores = np.array([
        [[0.9, 0.1, 0.0], [0.2, 0.8, 0.1], [0.5, 0.5, 0.0]],  # picks 0, 1, tie(0, 1)
        [[0.1, 0.2, 0.7], [0.3, 0.1, 0.0], [0.0, 0.0, 0.0]],  # picks 2, 0, padding phrase
    ])
    gold = np.array([[0, 2, 0], [2, 0, 1]])
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    # correct: (0,0) yes, (0,1) no, (0,2) tie -> pessimistic no, (1,0) yes, (1,1) yes -> 3 / 5
    assert region_phrase_grounding_accuracy(scores, gold, mask) == pytest.approx(0.6)
    # unbatched input
    assert region_phrase_grounding_accuracy(scores[0], gold[0]) == pytest.approx(1 / 3)


def test_grounding_region_mask_excludes_padding():
    scores = np.array([[[0.2, 0.9]]])
    gold = np.array([[0]])
    assert region_phrase_grounding_accuracy(scores, gold) == 0.0
    assert region_phrase_grounding_accuracy(scores, gold, region_mask=np.array([[1, 0]])) == 1.0


def test_grounding_box_variant():
    region_boxes = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    gold_boxes = np.array([[0.0, 0.0, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]])  # IoU with region 0: 0.25/0.3, 0.25
    scores = np.array([[0.9, 0.1], [0.9, 0.1]])
    assert region_phrase_grounding_accuracy(scores, region_boxes=region_boxes, gold_boxes=gold_boxes) == 0.5
    assert region_phrase_grounding_accuracy(scores, region_boxes=region_boxes, gold_boxes=gold_boxes,
                                            iou_threshold=0.2) == 1.0


def test_box_iou():
    assert box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
    assert box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0
    with pytest.raises(ValueError, match="x2 < x1"):
        box_iou([1, 0, 0, 1], [0, 0, 1, 1])


@pytest.mark.parametrize("kwargs, message", [
    ({"phrase_region_scores": np.zeros(3), "gold_region_index": np.zeros(3, int)}, r"\(B, P, N\)"),
    ({"phrase_region_scores": np.zeros((2, 3)), "gold_region_index": np.zeros(3, int)}, "gold_region_index must"),
    ({"phrase_region_scores": np.zeros((2, 3)), "gold_region_index": np.array([0, 3])}, r"\[0, 3\)"),
    ({"phrase_region_scores": np.zeros((2, 3)), "gold_region_index": np.zeros(2, int), "mask": np.ones(3)}, "mask"),
    ({"phrase_region_scores": np.zeros((2, 3)), "gold_region_index": np.zeros(2, int), "mask": np.zeros(2)},
     "no valid phrase"),
    ({"phrase_region_scores": np.zeros((2, 3))}, "either"),
    ({"phrase_region_scores": np.zeros((2, 3)), "region_boxes": np.zeros((3, 4))}, "both"),
    ({"phrase_region_scores": np.zeros((2, 3)), "region_boxes": np.zeros((2, 4)), "gold_boxes": np.zeros((2, 4))},
     "region_boxes must"),
])
def test_grounding_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        region_phrase_grounding_accuracy(**kwargs)
