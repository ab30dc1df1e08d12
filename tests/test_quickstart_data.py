import itertools
import json
from collections import deque

import numpy as np
import pytest
from PIL import Image

from processing.quickstart_data import (
    BACKGROUND,
    COLOURS,
    HELD_OUT_PAIRS,
    SHAPES,
    SIZES,
    generate_scenes,
    phrase_groundings,
    quickstart_phrase_queries,
    write_karpathy_json,
)
from processing.tokenization_glied import split_caption as caption_tokens

# ------------------------------------------------------------------ an independent reading of the captions
# The test's own statement of what the caption words mean; the generator must agree with it.

NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}
PLURAL_OF = {("crosses" if s == "cross" else s + "s"): s for s in SHAPES}
GENERIC = {"shape", "shapes", "object", "objects"}
RELATIONS = {
    ("to", "the", "left", "of"): "left", ("left", "of"): "left", ("on", "the", "left", "of"): "left",
    ("to", "the", "right", "of"): "right", ("right", "of"): "right", ("on", "the", "right", "of"): "right",
    ("above",): "above", ("over",): "above",
    ("below",): "below", ("under",): "below", ("beneath",): "below",
    ("next", "to"): "beside", ("beside",): "beside",
}
INVERSE = {"left": "right", "right": "left", "above": "below", "below": "above"}
POSITIONS = {
    ("in", "the", "middle"): (1, 1), ("in", "the", "center"): (1, 1),
    ("on", "the", "left"): (0, 1), ("on", "the", "right"): (2, 1),
    ("at", "the", "top"): (1, 0), ("at", "the", "bottom"): (1, 2),
}
for _row, _row_word in ((0, "top"), (2, "bottom")):
    for _col, _col_word in ((0, "left"), (2, "right")):
        POSITIONS[("in", "the", _row_word, _col_word, "corner")] = (_col, _row)
        POSITIONS[("at", "the", _row_word, _col_word)] = (_col, _row)
LEADING = {(), ("there", "is"), ("there", "are"), ("a", "picture", "of"), ("an", "image", "of")}
TRAILING = {
    (), ("on", "a", "plain", "background"), ("on", "a", "light", "background"),
    ("from", "left", "to", "right"), ("from", "top", "to", "bottom"), ("in", "a", "row"), ("in", "a", "column"),
    ("side", "by", "side"), ("one", "above", "the", "other"),
}


def relation(a, b):
    """Where box a is with respect to box b, by the documented rule (boxes apart along the dominant axis)."""
    dx = (b[0] + b[2]) / 2 - (a[0] + a[2]) / 2
    dy = (b[1] + b[3]) / 2 - (a[1] + a[3]) / 2
    if abs(dx) > 1.3 * abs(dy):
        return "left" if a[2] <= b[0] else "right" if b[2] <= a[0] else None
    if abs(dy) > 1.3 * abs(dx):
        return "above" if a[3] <= b[1] else "below" if b[3] <= a[1] else None
    return None


def thirds(box, size):
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return (0 if cx < size / 3 else 2 if cx > 2 * size / 3 else 1,
            0 if cy < size / 3 else 2 if cy > 2 * size / 3 else 1)


def parse(tokens):
    """Split tokens into noun phrases {count, size, colour, shape} and the word tuples between them."""
    phrases, gaps, words, i = [], [], [], 0
    while i < len(tokens):
        if tokens[i] in NUMBERS:
            count, j = NUMBERS[tokens[i]], i + 1
            if tokens[i] == "a" and j < len(tokens) and tokens[j] == "single":
                j += 1
            size = colour = None
            if j < len(tokens) and tokens[j] in SIZES:
                size, j = tokens[j], j + 1
            if j < len(tokens) and tokens[j] in COLOURS:
                colour, j = tokens[j], j + 1
            noun = tokens[j] if j < len(tokens) else None
            shape = noun if noun in SHAPES and count == 1 else PLURAL_OF.get(noun) if count > 1 else None
            if shape is not None or (noun in GENERIC and count > 1):
                gaps.append(tuple(words))
                words = []
                phrases.append({"count": count, "size": size, "colour": colour, "shape": shape})
                i = j + 1
                continue
        words.append(tokens[i])
        i += 1
    gaps.append(tuple(words))
    return phrases, gaps


def plural(shape):
    return next(p for p, s in PLURAL_OF.items() if s == shape)


def matches(phrase, obj):
    return all(phrase[k] in (None, obj[k]) for k in ("size", "colour", "shape"))


def strip_position(words):
    for phrase, cell in sorted(POSITIONS.items(), key=lambda item: -len(item[0])):  # longest first
        if words[: len(phrase)] == phrase:
            return cell, words[len(phrase):]
    return None, words


def check_caption(caption, record, image_size):
    """Raise AssertionError unless every statement the caption makes holds in the scene."""
    objects, boxes = record["objects"], record["boxes"].tolist()
    n = len(objects)
    tokens = caption_tokens(caption)
    phrases, gaps = parse(tokens)
    assert phrases, caption
    candidates = []
    for phrase in phrases:
        found = [k for k, obj in enumerate(objects) if matches(phrase, obj)]
        if phrase["count"] > 1:
            assert len(found) == phrase["count"], f"count wrong in {caption!r}"
        else:
            assert found, f"{phrase} absent in {caption!r}"
        candidates.append(found)

    def holds(left, right, rel):
        """Every object counted by a plural phrase (some object of a singular one) has rel to the other."""
        def one(a, b):
            r = relation(boxes[a], boxes[b])
            return r in ("left", "right") if rel == "beside" else r == rel
        lefts, rights = candidates[left], candidates[right]
        left_sets = [lefts] if phrases[left]["count"] > 1 else [[a] for a in lefts]
        return any(all(any(one(a, b) for b in rights if b != a) for a in group) for group in left_sets)

    lead, position = gaps[0], None
    position, rest = strip_position(lead)
    if position is not None:  # "at the bottom there is a red circle"
        assert rest == ("there", "is") and n == 1 and thirds(boxes[0], image_size) == position, caption
    else:
        assert lead in LEADING, f"unknown opening {lead} in {caption!r}"
    conjunctions = [False] * len(phrases)  # conjunctions[k]: phrase k joined to phrase k + 1 by "and" / list
    relations = []
    for k, gap in enumerate(gaps[1:-1]):
        as_relation = gap[1:] if gap[:1] == ("is",) else gap
        position, rest = (None, gap) if as_relation in RELATIONS else strip_position(gap)
        if position is not None:
            assert any(thirds(boxes[o], image_size) == position for o in candidates[k]), caption
        if rest in ((), ("and",)):
            conjunctions[k] = True
        elif rest == ("between",):
            assert gaps[k + 2] == ("and",), caption
            assert any(
                relation(boxes[m], boxes[a]) is not None
                and relation(boxes[m], boxes[b]) == INVERSE.get(relation(boxes[m], boxes[a]))
                for m in candidates[k] for a in candidates[k + 1] for b in candidates[k + 2]
                if len({m, a, b}) == 3
            ), f"between is false in {caption!r}"
        else:
            rest = rest[1:] if rest[:1] == ("is",) else rest
            assert rest in RELATIONS, f"unknown words {gap} in {caption!r}"
            relations.append((k, RELATIONS[rest]))
    for k, rel in relations:
        left = [k]
        while left[0] > 0 and conjunctions[left[0] - 1] and gaps[left[0]] == ("and",):
            left.insert(0, left[0] - 1)
        right = [k + 1]
        while right[-1] + 1 < len(phrases) and conjunctions[right[-1]] and gaps[right[-1] + 1] == ("and",):
            right.append(right[-1] + 1)
        for a, b in itertools.product(left, right):
            assert holds(a, b, rel), f"{rel} is false in {caption!r} ({objects}, {boxes})"
    tail = gaps[-1]
    position, rest = strip_position(tail)
    if position is not None:
        assert rest == () and any(thirds(boxes[o], image_size) == position for o in candidates[-1]), caption
        return
    assert tail in TRAILING, f"unknown ending {tail} in {caption!r}"
    axis = {("from", "left", "to", "right"): 0, ("in", "a", "row"): 0,
            ("from", "top", "to", "bottom"): 1, ("in", "a", "column"): 1}.get(tail)
    first = "left" if axis == 0 else "above"
    if axis is not None:  # the phrases are all the objects, forming a row / column
        assert len(phrases) == n and all(p["count"] == 1 for p in phrases), caption
        order = sorted(range(n), key=lambda o: boxes[o][axis] + boxes[o][axis + 2])
        assert all(relation(boxes[a], boxes[b]) == first for a, b in zip(order, order[1:])), caption
        if tail[0] == "from":  # and in this order
            assert all(o in c for o, c in zip(order, candidates)), caption
    if tail in (("side", "by", "side"), ("one", "above", "the", "other")):
        a, b = candidates[-1]
        assert (relation(boxes[a], boxes[b]) in ("left", "right")) == (tail[0] == "side"), caption
        assert relation(boxes[a], boxes[b]) is not None, caption


# ------------------------------------------------------------------------------------------------- fixtures

SIZE = 96


@pytest.fixture(scope="module")
def scenes():
    return generate_scenes(num_train=400, num_val=60, num_test=60, image_size=SIZE, seed=3)


def all_records(scenes):
    return [r for split in scenes.values() for r in split]


# ---------------------------------------------------------------------------------------------------- tests


def test_record_layout(scenes):
    assert [len(scenes[s]) for s in ("train", "val", "test")] == [400, 60, 60]
    ids = [r["image_id"] for r in all_records(scenes)]
    assert len(set(ids)) == len(ids)
    for record in all_records(scenes):
        n = len(record["objects"])
        assert 1 <= n <= 3
        assert record["image"].mode == "RGB" and record["image"].size == (SIZE, SIZE)
        assert record["boxes"].dtype == np.float32 and record["boxes"].shape == (n, 4)
        assert len(record["captions"]) == 5 and len(set(record["captions"])) >= 3
        assert all(set(o) == {"colour", "size", "shape"} for o in record["objects"])
    counts = [len(r["objects"]) for r in scenes["train"]]
    assert {1, 2, 3} <= set(counts)


def test_deterministic_per_seed_and_stable_across_split_sizes():
    a = generate_scenes(num_train=20, num_val=5, num_test=5, seed=7)
    b = generate_scenes(num_train=20, num_val=5, num_test=5, seed=7)
    c = generate_scenes(num_train=20, num_val=5, num_test=5, seed=8)
    bigger = generate_scenes(num_train=40, num_val=5, num_test=9, seed=7)
    for split in ("train", "val", "test"):
        for x, y, z in zip(a[split], b[split], bigger[split]):
            for other in (y, z):
                assert x["captions"] == other["captions"] and x["attributes"] == other["attributes"]
                assert x["objects"] == other["objects"] and np.array_equal(x["boxes"], other["boxes"])
                assert x["image"].tobytes() == other["image"].tobytes()
    assert [r["captions"] for r in a["train"]] != [r["captions"] for r in c["train"]]


def test_every_caption_is_faithful_to_its_scene(scenes):
    kinds = set()
    for record in all_records(scenes):
        for caption in record["captions"]:
            check_caption(caption, record, SIZE)
            tokens = caption_tokens(caption)
            kinds.update(k for k in ("between", "two", "three", "row", "column", "left", "above", "below",
                                     "right", "beside", "next", "corner", "middle") if k in tokens)
    # the grammar's variety really shows up
    assert kinds == {"between", "two", "three", "row", "column", "left", "above", "below", "right", "beside",
                     "next", "corner", "middle"}


def test_checker_rejects_false_captions(scenes):
    # the faithfulness checker must be able to fail: swap a relation, a colour, a count
    record = next(r for r in scenes["train"] if r["relations"] and len(r["objects"]) == 2
                  and r["objects"][0]["colour"] != r["objects"][1]["colour"])
    (i, rel, j) = record["relations"][0]
    a, b = record["objects"][i], record["objects"][j]
    words = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
    good = f"a {a['colour']} {a['shape']} {words[rel]} a {b['colour']} {b['shape']}"
    check_caption(good, record, SIZE)
    for bad in (
        f"a {a['colour']} {a['shape']} {words[INVERSE[rel]]} a {b['colour']} {b['shape']}",
        f"two {a['colour']} {plural(a['shape'])}",
        f"a {next(c for c in COLOURS if c not in (a['colour'], b['colour']))} {a['shape']}",
        f"a {a['colour']} {a['shape']} in a row with a bicycle",
    ):
        with pytest.raises(AssertionError):
            check_caption(bad, record, SIZE)


def test_held_out_pairs_absent_from_train_and_present_in_val_and_test(scenes):
    held_out = set(HELD_OUT_PAIRS)
    for record in scenes["train"]:
        assert not record["novel"]
        assert not {(o["colour"], o["shape"]) for o in record["objects"]} & held_out
        for caption in record["captions"]:
            tokens = caption_tokens(caption)
            for colour, shape in held_out:  # nor as a phrase "(size) colour shape(s)" in any caption
                assert not any(x == colour and PLURAL_OF.get(y, y) == shape for x, y in zip(tokens, tokens[1:]))
    # every colour and every shape is still seen in train
    seen = {(o["colour"], o["shape"]) for r in scenes["train"] for o in r["objects"]}
    assert {c for c, _ in seen} == set(COLOURS) and {s for _, s in seen} == set(SHAPES)
    for split in ("val", "test"):
        novel = [r for r in scenes[split] if r["novel"]]
        assert len(novel) == len(scenes[split]) // 2
        present = set()
        for record in scenes[split]:
            pairs = {(o["colour"], o["shape"]) for o in record["objects"]}
            assert bool(pairs & held_out) == record["novel"]
            present |= pairs & held_out
        assert present == held_out


def test_novel_fraction_and_custom_held_out_pairs():
    scenes = generate_scenes(num_train=50, num_val=0, num_test=12, novel_fraction=1.0,
                             held_out_pairs=[("black", "circle")])
    assert all(any((o["colour"], o["shape"]) == ("black", "circle") for o in r["objects"]) for r in scenes["test"])
    assert not any((o["colour"], o["shape"]) == ("black", "circle") for r in scenes["train"] for o in r["objects"])
    none = generate_scenes(num_train=0, num_val=0, num_test=10, novel_fraction=0.0)
    assert not any(r["novel"] for r in none["test"])


def components(mask):
    """4-connected components of a boolean mask."""
    seen = np.zeros_like(mask)
    count = 0
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        count += 1
        queue = deque([start])
        seen[start] = True
        while queue:
            y, x = queue.popleft()
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
    return count


def test_boxes_are_tight_disjoint_and_objects_distinguishable_by_pixels(scenes):
    extents = {"small": [], "large": []}
    shapes_seen = set()
    for record in all_records(scenes)[:150]:
        pixels = np.asarray(record["image"])
        foreground = np.any(pixels != np.array(BACKGROUND, dtype=np.uint8), axis=-1)
        covered = np.zeros_like(foreground)
        boxes = record["boxes"].astype(int)
        for box, obj in zip(boxes, record["objects"]):
            x1, y1, x2, y2 = box
            inside = foreground[y1:y2, x1:x2]
            # tight: every edge row / column of the box holds a drawn pixel
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            # flat-coloured in the object's colour, one 4-connected piece
            assert np.all(pixels[y1:y2, x1:x2][inside] == np.array(COLOURS[obj["colour"]], dtype=np.uint8))
            assert components(inside) == 1
            covered[y1:y2, x1:x2] = True
            extents[obj["size"]].append(max(x2 - x1, y2 - y1))
            shapes_seen.add(obj["shape"])
        assert not np.any(foreground & ~covered)  # nothing drawn outside the boxes
        assert components(foreground) == len(boxes)  # connected components recover the objects
        for a, b in itertools.combinations(boxes, 2):  # disjoint, with background between
            gap = max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])
            assert gap >= 3
    assert max(extents["small"]) < min(extents["large"])
    assert shapes_seen == set(SHAPES)
    palette = [np.array(c, dtype=float) for c in [BACKGROUND, *COLOURS.values()]]
    assert min(np.linalg.norm(a - b) for a, b in itertools.combinations(palette, 2)) > 60


def test_same_colour_shapes_differ_in_silhouette():
    # a large object of every shape in one colour: the six masks must all differ
    scenes = generate_scenes(num_train=300, num_val=0, num_test=0, seed=1)
    masks = {}
    for record in scenes["train"]:
        for obj, box in zip(record["objects"], record["boxes"].astype(int)):
            if obj["size"] == "large" and obj["shape"] not in masks:
                x1, y1, x2, y2 = box
                crop = np.asarray(record["image"])[y1:y2, x1:x2]
                mask = np.any(crop != np.array(BACKGROUND, dtype=np.uint8), axis=-1)
                masks[obj["shape"]] = np.asarray(Image.fromarray(mask).resize((24, 24)), dtype=float)
    assert set(masks) == set(SHAPES)
    for a, b in itertools.combinations(SHAPES, 2):
        assert np.mean(np.abs(masks[a] - masks[b])) > 0.05, (a, b)


def test_attribute_words_and_noise():
    clean = generate_scenes(num_train=60, num_val=0, num_test=0, seed=2, attribute_drop_rate=0.0,
                            attribute_spurious_rate=0.0)
    noisy = generate_scenes(num_train=60, num_val=0, num_test=0, seed=2, attribute_drop_rate=0.3,
                            attribute_spurious_rate=1.0)
    differences = 0
    for c, z in zip(clean["train"], noisy["train"]):
        present = {v for o in c["objects"] for v in o.values()}
        assert set(c["attributes"]) == present and len(c["attributes"]) == len(present)
        assert c["captions"] == z["captions"] and c["objects"] == z["objects"]  # noise has its own stream
        spurious = set(z["attributes"]) - present
        assert len(spurious) == 1 and spurious <= set(COLOURS) | set(SHAPES) | set(SIZES)
        differences += set(z["attributes"]) != present | spurious
    assert differences > 0  # some true words dropped


def test_write_karpathy_json_round_trip(tmp_path, scenes):
    small = {split: records[:4] for split, records in scenes.items()}
    paths = write_karpathy_json(small, tmp_path)
    data = json.loads(paths["dataset_json"].read_text(encoding="utf-8"))
    attributes = json.loads(paths["attributes_json"].read_text(encoding="utf-8"))
    assert data["dataset"] == "quickstart" and len(data["images"]) == 12
    sentids = []
    for imgid, (entry, record) in enumerate(zip(data["images"], [r for s in small.values() for r in s])):
        assert {"filename", "filepath", "imgid", "split", "sentences", "sentids", "cocoid"} <= set(entry)
        assert entry["imgid"] == imgid and entry["split"] == record["split"] == entry["filepath"]
        assert [s["raw"] for s in entry["sentences"]] == record["captions"]
        for sentence in entry["sentences"]:
            assert sentence["tokens"] == caption_tokens(sentence["raw"]) and sentence["imgid"] == imgid
            assert all(t == t.lower() and t.isalnum() for t in sentence["tokens"])
            sentids.append(sentence["sentid"])
        with Image.open(tmp_path / entry["filepath"] / entry["filename"]) as image:
            assert image.tobytes() == record["image"].tobytes()
        assert np.allclose(entry["boxes"], record["boxes"])
        assert attributes[entry["image_id"]] == record["attributes"]
        assert entry["filename"] == entry["image_id"] + ".png"
    assert sentids == list(range(len(sentids)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_train=-1), "num_train must be a non-negative integer"),
        (dict(image_size=32), "image_size must be an integer of at least 64"),
        (dict(novel_fraction=1.5), "novel_fraction must lie in"),
        (dict(attribute_drop_rate=-0.1), "attribute_drop_rate must lie in"),
        (dict(captions_per_image=0), "captions_per_image must be a positive integer"),
        (dict(held_out_pairs=[("pink", "circle")]), "held_out_pairs entries must be"),
        (dict(held_out_pairs=[("red", s) for s in SHAPES]), "without any seen pair"),
    ],
)
def test_bad_options_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_scenes(**{"num_train": 1, "num_val": 1, "num_test": 1, **kwargs})


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="non-empty dict"):
        write_karpathy_json({}, tmp_path)
    with pytest.raises(ValueError, match="lacks"):
        write_karpathy_json({"train": [{"image_id": "x"}]}, tmp_path)


@pytest.mark.parametrize("image_size", [64, 128])
def test_other_image_sizes(image_size):
    scenes = generate_scenes(num_train=40, num_val=10, num_test=10, image_size=image_size, seed=5)
    for record in all_records(scenes):
        assert record["image"].size == (image_size, image_size)
        assert record["boxes"].min() >= 0 and record["boxes"].max() <= image_size
        for caption in record["captions"]:
            check_caption(caption, record, image_size)


# ------------------------------------------------------------------------------------- phrase annotations


def test_phrase_groundings_hand_made_scene():
    objects = [{"colour": "red", "size": "small", "shape": "circle"},
               {"colour": "blue", "size": "large", "shape": "square"},
               {"colour": "red", "size": "large", "shape": "circle"}]
    boxes = np.array([[1, 2, 15, 16], [30, 30, 55, 55], [60, 5, 85, 30]], dtype=np.float32)
    found = phrase_groundings(caption_tokens("There is a small red circle left of a blue square."), objects, boxes)
    assert found == [
        {"first_word_index": 2, "phrase": "a small red circle", "boxes": [[1.0, 2.0, 15.0, 16.0]], "ambiguous": False},
        {"first_word_index": 8, "phrase": "a blue square", "boxes": [[30.0, 30.0, 55.0, 55.0]], "ambiguous": False},
    ]
    # plural: every matching object; singular fitting two objects: both, marked ambiguous
    found = phrase_groundings(caption_tokens("Two red circles and a red circle"), objects, boxes)
    assert [(f["first_word_index"], f["phrase"], f["ambiguous"]) for f in found] == [
        (0, "two red circles", False), (4, "a red circle", True)]
    assert found[0]["boxes"] == found[1]["boxes"] == [[1.0, 2.0, 15.0, 16.0], [60.0, 5.0, 85.0, 30.0]]
    # wrong count, absent objects and phrases without colour or shape are not annotated
    for text in ("three red circles", "a green star", "two shapes", "a red shape", "a large blue"):
        assert phrase_groundings(caption_tokens(text), objects, boxes) == [], text
    assert phrase_groundings(["a", "single", "large", "red", "circle"], objects, boxes)[0]["boxes"] == [
        [60.0, 5.0, 85.0, 30.0]]


def test_phrase_groundings_agree_with_the_caption_reading(scenes):
    # every "(count) (size) colour shape(s)" phrase of the test's own parser is annotated, with exactly the boxes
    # of the objects it names
    ambiguous = 0
    for record in all_records(scenes):
        for caption in record["captions"]:
            tokens = caption_tokens(caption)
            phrases, _ = parse(tokens)
            named = [p for p in phrases if p["colour"] is not None and p["shape"] is not None]
            found = phrase_groundings(tokens, record["objects"], record["boxes"])
            assert len(found) == len(named), caption
            for phrase, entry in zip(named, found):
                words = entry["phrase"].split()
                assert tokens[entry["first_word_index"]:entry["first_word_index"] + len(words)] == words
                assert words[-1] in (phrase["shape"], plural(phrase["shape"])) and phrase["colour"] in words
                objects = [k for k, obj in enumerate(record["objects"]) if matches(phrase, obj)]
                assert entry["boxes"] == record["boxes"][objects].tolist(), caption
                assert entry["ambiguous"] == (phrase["count"] == 1 and len(objects) > 1)
                ambiguous += entry["ambiguous"]
    assert ambiguous > 0


def test_written_json_carries_the_phrase_annotations(tmp_path, scenes):
    small = {split: records[:5] for split, records in scenes.items()}
    paths = write_karpathy_json(small, tmp_path)
    data = json.loads(paths["dataset_json"].read_text(encoding="utf-8"))
    records = [r for s in small.values() for r in s]
    for entry, record in zip(data["images"], records):
        for sentence in entry["sentences"]:
            assert sentence["phrases"] == phrase_groundings(sentence["tokens"], record["objects"], record["boxes"])
            assert sentence["phrases"]  # every quick-start caption names at least one object
            for phrase in sentence["phrases"]:
                for box in phrase["boxes"]:
                    assert box in entry["boxes"]


def test_quickstart_phrase_queries(tmp_path, scenes):
    queries = quickstart_phrase_queries(scenes, split="test")
    test = scenes["test"]
    present = {(o["colour"], o["shape"]) for r in test for o in r["objects"]}
    plain = [q for q in queries if q["size"] is None]
    assert {(q["colour"], q["shape"]) for q in plain} == present and len(plain) == len(present)
    seen = {(o["colour"], o["shape"]) for r in scenes["train"] for o in r["objects"]}
    for query in queries:
        words = [query["size"]] if query["size"] else []
        assert query["query"].split()[1:] == words + [query["colour"], query["shape"]]
        expected = [r["image_id"] for r in test if any(
            (o["colour"], o["shape"]) == (query["colour"], query["shape"]) and query["size"] in (None, o["size"])
            for o in r["objects"])]
        assert query["relevant"] == expected and expected
        assert query["novel"] == ((query["colour"], query["shape"]) not in seen)
    assert {(q["colour"], q["shape"]) for q in queries if q["novel"]} == set(HELD_OUT_PAIRS)
    assert any(q["size"] == "small" for q in queries) and any(q["size"] == "large" for q in queries)
    assert quickstart_phrase_queries(scenes, split="test", sizes=False) == plain
    # from the written JSON: the same queries; from test records alone: novel = the held-out pairs
    paths = write_karpathy_json(scenes, tmp_path)
    assert quickstart_phrase_queries(paths["dataset_json"], split="test") == queries
    alone = quickstart_phrase_queries(test, split="test")
    assert all(q["novel"] == ((q["colour"], q["shape"]) in set(HELD_OUT_PAIRS)) for q in alone)
    with pytest.raises(ValueError, match="no image of split"):
        quickstart_phrase_queries(scenes, split="nothing")
