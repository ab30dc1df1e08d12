"""Generated quick-start captioning data: rendered scenes of flat-coloured shapes with reference captions.

Users without COCO run the whole train / evaluate loop on this data in minutes. Every image is a plain light
background with 1 to 3 objects; an object is a (colour, size, shape) triple drawn flat-coloured (no
anti-aliasing), with a gap of at least `margin` background pixels between any two objects' boxes, so connected
components on the background recover each object and its box. Objects differ by pixels alone: colour and
silhouette; "small" and "large" extents never overlap.

Each record carries five reference captions from a small grammar (relations, counts, lists, positions), all
faithful to the scene: relations are computed from the drawn boxes (`spatial_relation`), positions from the
box centre (`position_phrase`), counts from the objects.

Attribute words mimic a word detector (Fang et al. 2015): the bag of colour, shape and size words present,
with optional noise (each true word dropped with `attribute_drop_rate`; one spurious word added with
`attribute_spurious_rate`).

Splits and compositional generalisation: the (colour, shape) pairs in `held_out_pairs` (default
`HELD_OUT_PAIRS`: red star, green diamond, blue triangle, yellow cross, purple circle, orange square) never
appear in a train image nor, hence, in a train caption; every colour and every shape is still seen in train
with other partners. In val and test a `novel_fraction` of the images (default one half, evenly interleaved)
are "novel": each contains at least one object of a held-out pair (cycling through the pairs, so each one
occurs as soon as a split has len(held_out_pairs) novel images); the other images use seen pairs only. Every
record says which it is (`"novel"`), so metrics can be reported on seen and unseen combinations separately.

Determinism: image i of a split depends only on (seed, split, i, image_size and the scene options), not on
the sizes of the other splits; the attribute noise has its own random stream, so changing the noise rates
leaves images and captions unchanged.

Boxes are pixel xyxy floats with exclusive right / bottom edges (PIL's `getbbox` convention): x1 = first
column, x2 = last column + 1, so (x2 - x1) is the width in pixels and dividing by the image size gives the
[0, 1] boxes of the model.

Phrase grounding annotations (the format of `processing.retrieval_evaluation`, modelled on Flickr30K Entities):
`write_karpathy_json` gives every sentence a ``"phrases"`` list, one entry per noun phrase that names objects by
colour and shape, ``[a|an|the|one|two|three] [single] [small|large] colour shape(s)`` ("a small red circle",
"two blue squares"): ``{"first_word_index": index of its first word in split_caption(raw), "phrase": its words,
"boxes": [[x1, y1, x2, y2], ...] pixel boxes of the objects it names, "ambiguous": bool}``. The objects come from
the words and the scene alone (`phrase_groundings`): those matching the phrase's size (when given), colour and
shape. A plural phrase names all of them (its count must agree, else it is left out); a singular phrase that
fits several objects (two objects of the same size, colour and shape) lists every candidate and is marked
``"ambiguous": true`` (each candidate makes the phrase true, so grounding on any of them is right). Phrases
without a colour or a shape word ("three shapes", "two red objects", "two circles") name no single kind of
object and are not annotated. `quickstart_phrase_queries` turns the objects of a split into phrase-level
retrieval queries ("a red circle" -> the images holding one).

Timing: `python -m processing.quickstart_data --out_dir data/quickstart` generates and writes the default
data set and prints how long each step took.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .arguments import positive_int
from .tokenization_glied import split_caption

__all__ = [
    "BACKGROUND",
    "COLOURS",
    "HELD_OUT_PAIRS",
    "SHAPES",
    "SIZES",
    "attribute_vocabulary",
    "generate_scenes",
    "phrase_groundings",
    "position_phrase",
    "quickstart_phrase_queries",
    "spatial_relation",
    "write_karpathy_json",
]

BACKGROUND = (240, 240, 240)
COLOURS = {
    "red": (215, 35, 35),
    "green": (30, 150, 50),
    "blue": (35, 75, 215),
    "yellow": (240, 205, 25),
    "purple": (130, 50, 170),
    "orange": (245, 125, 15),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
PLURALS = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES}
# object extent (width of its square drawing box) as a fraction of the image side; the two ranges are disjoint
SIZES = {"small": (0.14, 0.17), "large": (0.24, 0.28)}
HELD_OUT_PAIRS = (
    ("red", "star"),
    ("green", "diamond"),
    ("blue", "triangle"),
    ("yellow", "cross"),
    ("purple", "circle"),
    ("orange", "square"),
)
SPLITS = ("train", "val", "test")

# a relation holds when the boxes are apart along one axis and the centres are further apart along it than
# RELATION_DOMINANCE times their distance along the other axis (so near-diagonal pairs get no relation)
RELATION_DOMINANCE = 1.3
INVERSE_RELATION = {"left": "right", "right": "left", "above": "below", "below": "above"}
RELATION_PHRASES = {
    "left": ("to the left of", "left of", "on the left of"),
    "right": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
NEAR_PHRASES = ("next to", "beside")
# (column third, row third) of the box centre -> phrases
POSITION_PHRASES = {
    (1, 1): ("in the middle", "in the center"),
    (0, 1): ("on the left",),
    (2, 1): ("on the right",),
    (1, 0): ("at the top",),
    (1, 2): ("at the bottom",),
    (0, 0): ("in the top left corner", "at the top left"),
    (2, 0): ("in the top right corner", "at the top right"),
    (0, 2): ("in the bottom left corner", "at the bottom left"),
    (2, 2): ("in the bottom right corner", "at the bottom right"),
}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}

_BORDER = 2  # background pixels kept between any object and the image edge
_LINE_JITTER = 0.05  # perpendicular jitter of objects in a row / column, fraction of the image side
_MIN_IMAGE_SIZE = 64

# unit polygons in [0, 1]^2, stretched to fill the object's drawing box
_TRIANGLE = ((0.5, 0.0), (1.0, 1.0), (0.0, 1.0))
_DIAMOND = ((0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5))
_CROSS = tuple(
    (x / 3, y / 3)
    for x, y in ((1, 0), (2, 0), (2, 1), (3, 1), (3, 2), (2, 2), (2, 3), (1, 3), (1, 2), (0, 2), (0, 1), (1, 1))
)


def _star_polygon(points=5, inner_ratio=0.5):
    vertices = []
    for k in range(2 * points):
        radius = 1.0 if k % 2 == 0 else inner_ratio
        angle = -math.pi / 2 + k * math.pi / points
        vertices.append((radius * math.cos(angle), radius * math.sin(angle)))
    xs, ys = [v[0] for v in vertices], [v[1] for v in vertices]
    return tuple(((x - min(xs)) / (max(xs) - min(xs)), (y - min(ys)) / (max(ys) - min(ys))) for x, y in vertices)


_STAR = _star_polygon()
_POLYGONS = {"triangle": _TRIANGLE, "diamond": _DIAMOND, "cross": _CROSS, "star": _STAR}


def attribute_vocabulary():
    """Every word an attribute bag can hold: colours, shapes, sizes (all of them caption words too)."""
    return list(COLOURS) + list(SHAPES) + list(SIZES)


def spatial_relation(box_a, box_b):
    """Where box a lies with respect to box b: "left", "right", "above", "below" or None (overlapping along
    both axes, or too close to a diagonal). Boxes are xyxy; y grows downwards."""
    dx = (box_b[0] + box_b[2]) / 2 - (box_a[0] + box_a[2]) / 2
    dy = (box_b[1] + box_b[3]) / 2 - (box_a[1] + box_a[3]) / 2
    if abs(dx) > RELATION_DOMINANCE * abs(dy):
        if box_a[2] <= box_b[0]:
            return "left"
        if box_b[2] <= box_a[0]:
            return "right"
    elif abs(dy) > RELATION_DOMINANCE * abs(dx):
        if box_a[3] <= box_b[1]:
            return "above"
        if box_b[3] <= box_a[1]:
            return "below"
    return None


def _thirds(box, width, height):
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    column = 0 if cx < width / 3 else 2 if cx > 2 * width / 3 else 1
    row = 0 if cy < height / 3 else 2 if cy > 2 * height / 3 else 1
    return column, row


def position_phrase(box, width, height, rng=None):
    """A phrase naming where the box centre lies in a 3 x 3 grid of the image ("in the top left corner")."""
    phrases = POSITION_PHRASES[_thirds(box, width, height)]
    return phrases[0] if rng is None else rng.choice(phrases)


# --------------------------------------------------------------------------------------------------- scenes


def _validate_options(num_train, num_val, num_test, image_size, held_out_pairs, novel_fraction,
                      captions_per_image, attribute_drop_rate, attribute_spurious_rate):
    for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < _MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an integer of at least {_MIN_IMAGE_SIZE} pixels, got {image_size!r}")
    positive_int(captions_per_image, "captions_per_image")
    for name, value in (("novel_fraction", novel_fraction), ("attribute_drop_rate", attribute_drop_rate),
                        ("attribute_spurious_rate", attribute_spurious_rate)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    pairs = []
    for pair in held_out_pairs:
        if len(pair) != 2 or pair[0] not in COLOURS or pair[1] not in SHAPES:
            raise ValueError(
                f"held_out_pairs entries must be (colour, shape) with colour in {list(COLOURS)} and shape in "
                f"{list(SHAPES)}, got {pair!r}"
            )
        pairs.append((pair[0], pair[1]))
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"held_out_pairs has duplicates: {pairs}")
    seen = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in set(pairs)]
    unseen_words = [c for c in COLOURS if all(p[0] != c for p in seen)]
    unseen_words += [s for s in SHAPES if all(p[1] != s for p in seen)]
    if unseen_words:
        raise ValueError(
            f"held_out_pairs leave {unseen_words} without any seen pair, so train would never show them"
        )
    if pairs == [] and novel_fraction > 0 and (num_val or num_test):
        raise ValueError("novel_fraction > 0 needs at least one held-out (colour, shape) pair")
    return pairs, seen


def _sample_objects(rng, n, seen_pairs, all_pairs, forced_pair):
    """n (colour, size, shape) triples; forced_pair (a held-out pair) fills one slot of a novel scene."""
    pool = all_pairs if forced_pair is not None else seen_pairs
    pairs = [rng.choice(pool) for _ in range(n)]
    if n >= 2 and rng.random() < 0.3:  # repeated (colour, shape): gives counts ("two red circles")
        pairs[1] = pairs[0]
        if n == 3 and rng.random() < 0.3:
            pairs[2] = pairs[0]
    if forced_pair is not None:
        slot = rng.randrange(n)
        if n >= 2 and pairs.count(pairs[slot]) > 1 and rng.random() < 0.5:
            pairs = [forced_pair if p == pairs[slot] else p for p in pairs]  # a repeated novel pair
        else:
            pairs[slot] = forced_pair
    return [{"colour": c, "size": rng.choice(tuple(SIZES)), "shape": s} for c, s in pairs]


def _extent(size_word, image_size, rng):
    low, high = SIZES[size_word]
    return rng.randint(round(low * image_size), round(high * image_size))


def _margin(image_size):
    return max(3, round(0.04 * image_size))


def _line_layout(rng, extents, image_size, horizontal):
    """Top-left corners of objects placed in a row (horizontal) or a column, in list order, random gaps."""
    margin = _margin(image_size)
    slack = image_size - 2 * _BORDER - sum(extents) - margin * (len(extents) - 1)
    if slack < 0:
        raise RuntimeError(f"objects {extents} do not fit in a line of {image_size} pixels")  # sizes forbid it
    cuts = sorted(rng.randint(0, slack) for _ in extents)
    along, position, previous = [], _BORDER, 0
    for cut, extent in zip(cuts, extents):
        position += cut - previous
        previous = cut
        along.append(position)
        position += extent + margin
    widest = max(extents)
    centre = rng.uniform(_BORDER + widest / 2, image_size - _BORDER - widest / 2)
    jitter = _LINE_JITTER * image_size
    across = []
    for extent in extents:
        start = round(centre + rng.uniform(-jitter, jitter) - extent / 2)
        across.append(min(max(start, _BORDER), image_size - _BORDER - extent))
    return [(a, b) if horizontal else (b, a) for a, b in zip(along, across)]


def _scatter_layout(rng, extents, image_size, tries=100):
    """Uniformly random top-left corners with at least `margin` pixels between boxes, or None."""
    margin = _margin(image_size)
    for _ in range(tries):
        corners = [(rng.randint(_BORDER, image_size - _BORDER - e), rng.randint(_BORDER, image_size - _BORDER - e))
                   for e in extents]
        if all(
            max(xb - (xa + ea), xa - (xb + eb), yb - (ya + ea), ya - (yb + eb)) >= margin
            for i, ((xa, ya), ea) in enumerate(zip(corners, extents))
            for (xb, yb), eb in zip(corners[i + 1:], extents[i + 1:])
        ):
            return corners
    return None


def _render(objects, corners, extents, image_size):
    """The RGB image and the tight pixel boxes (xyxy, exclusive right / bottom) of the drawn objects."""
    labels = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(labels)
    for k, (obj, (x0, y0), extent) in enumerate(zip(objects, corners, extents), start=1):
        x1, y1 = x0 + extent - 1, y0 + extent - 1
        if obj["shape"] == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=k)
        elif obj["shape"] == "square":
            draw.rectangle((x0, y0, x1, y1), fill=k)
        else:
            draw.polygon([(x0 + u * (extent - 1), y0 + v * (extent - 1)) for u, v in _POLYGONS[obj["shape"]]],
                         fill=k)
    label_array = np.asarray(labels)
    palette = np.array([BACKGROUND] + [COLOURS[obj["colour"]] for obj in objects], dtype=np.uint8)
    image = Image.fromarray(palette[label_array], "RGB")
    boxes = np.zeros((len(objects), 4), dtype=np.float32)
    for k in range(1, len(objects) + 1):
        mask = label_array == k
        columns, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
        boxes[k - 1] = (columns[0], rows[0], columns[-1] + 1, rows[-1] + 1)
    return image, boxes


# ------------------------------------------------------------------------------------------------- captions


def _article(word):
    return "an" if word[0] in "aeiou" else "a"


class _Captioner:
    """Phrase builders for one scene; every family returns a caption faithful to the scene."""

    def __init__(self, rng, objects, boxes, image_size):
        self.rng, self.objects, self.boxes, self.size = rng, objects, boxes, image_size
        self.n = len(objects)
        self.relations = {(i, j): spatial_relation(boxes[i], boxes[j])
                          for i in range(self.n) for j in range(self.n) if i != j}

    def words(self, i):
        """[size] colour shape of object i; the size always when it tells two same-coloured shapes apart."""
        obj = self.objects[i]
        needs_size = any(o["colour"] == obj["colour"] and o["shape"] == obj["shape"] and o["size"] != obj["size"]
                         for o in self.objects)
        with_size = needs_size or self.rng.random() < 0.35
        return " ".join(([obj["size"]] if with_size else []) + [obj["colour"], obj["shape"]])

    def np(self, i):
        words = self.words(i)
        return f"{_article(words)} {words}"

    def listing(self, order):
        phrases = [self.np(i) for i in order]
        if len(phrases) == 1:
            return phrases[0]
        return ", ".join(phrases[:-1]) + " and " + phrases[-1]

    def shuffled(self):
        order = list(range(self.n))
        self.rng.shuffle(order)
        return order

    def related_pairs(self, horizontal_only=False):
        return [(i, j, r) for (i, j), r in self.relations.items()
                if r is not None and (not horizontal_only or r in ("left", "right"))]

    def line(self):
        """("row" | "column", indices in reading order) when all objects form one, else None."""
        if self.n < 2:
            return None
        for kind, first, key in (("row", "left", 0), ("column", "above", 1)):
            order = sorted(range(self.n), key=lambda k: self.boxes[k][key] + self.boxes[k][key + 2])
            if all(self.relations[(a, b)] == first for a, b in zip(order, order[1:])):
                return kind, order
        return None

    def groups(self):
        """[(indices, colour, shape)] of objects sharing a colour and a shape, in first-appearance order."""
        found = {}
        for i, obj in enumerate(self.objects):
            found.setdefault((obj["colour"], obj["shape"]), []).append(i)
        return [(idx, c, s) for (c, s), idx in found.items()]

    def count_phrase(self, indices, colour, shape):
        if len(indices) == 1:
            return self.np(indices[0])
        return f"{NUMBER_WORDS[len(indices)]} {colour} {PLURALS[shape]}"

    # ---- families: each a callable returning one caption
    def families(self):
        rng, n = self.rng, self.n
        fams = []
        if n == 1:
            where = lambda: position_phrase(self.boxes[0], self.size, self.size, rng)  # noqa: E731
            fams += [
                lambda: self.np(0),
                lambda: f"there is {self.np(0)}",
                lambda: f"{self.np(0)} {where()}",
                lambda: f"there is {self.np(0)} {where()}",
                lambda: f"{rng.choice(('a picture of', 'an image of'))} {self.np(0)}",
                lambda: f"{self.np(0)} on a {rng.choice(('plain', 'light'))} background",
                lambda: f"a single {self.words(0)}",
                lambda: f"{where()} there is {self.np(0)}",
            ]
            return fams
        groups = self.groups()
        related = self.related_pairs()
        line = self.line()
        shape_word = rng.choice(("shapes", "objects"))
        fams.append(lambda: f"{NUMBER_WORDS[n]} {shape_word} : {self.listing(self.shuffled())}")
        fams.append(lambda: self.listing(self.shuffled()))
        fams.append(lambda: f"{rng.choice(('a picture of', 'an image of', 'there is'))} "
                            f"{self.listing(self.shuffled())}")
        if len(groups) < n:  # some (colour, shape) repeats: counts
            def counted():
                parts = [self.count_phrase(*g) for g in groups]
                rng.shuffle(parts)
                return " and ".join(parts)
            fams.append(counted)
            fams.append(lambda: f"there are {counted()}")
        if related:
            def clause():
                # with a third object z, "x r y and z" must hold under both readings ("(x r y) and z" and
                # "x r (y and z)"), likewise "x and z r y"; otherwise z is left out
                i, j, r = rng.choice(related)
                phrase = rng.choice(RELATION_PHRASES[r])
                rest = [k for k in range(n) if k not in (i, j)]
                if rest and self.relations[(i, rest[0])] == r:
                    return f"{self.np(i)} {phrase} {self.np(j)} and {self.np(rest[0])}"
                if rest and self.relations[(rest[0], j)] == r:
                    return f"{self.np(i)} and {self.np(rest[0])} {phrase} {self.np(j)}"
                return f"{self.np(i)} {phrase} {self.np(j)}"
            fams.append(clause)
            fams.append(lambda: f"there is {clause()}")
            if n == 2:
                def is_clause():
                    i, j, r = rng.choice(related)
                    return f"{self.np(i)} is {rng.choice(RELATION_PHRASES[r])} {self.np(j)}"
                fams.append(is_clause)
        horizontal = self.related_pairs(horizontal_only=True)
        if n == 2 and horizontal:
            fams.append(lambda: f"{self.np(0)} {rng.choice(NEAR_PHRASES)} {self.np(1)}")
        if n == 2 and not related:
            fams.append(lambda: " and ".join(f"{self.np(i)} {position_phrase(self.boxes[i], self.size, self.size, rng)}"
                                             for i in self.shuffled()))
        for indices, colour, shape in groups:
            if len(indices) < 2:
                continue
            others = [k for k in range(n) if k not in indices]
            if len(indices) == 2 and not others and self.relations[tuple(indices)] is not None:
                arrangement = "side by side" if self.relations[tuple(indices)] in ("left", "right") \
                    else "one above the other"
                fams.append(lambda c=colour, s=shape, a=arrangement: f"two {c} {PLURALS[s]} {a}")
            if len(indices) == 2 and others:
                shared = {self.relations[(k, others[0])] for k in indices}
                if len(shared) == 1 and None not in shared:
                    r = shared.pop()
                    fams.append(lambda c=colour, s=shape, r=r, z=others[0]:
                                f"two {c} {PLURALS[s]} {rng.choice(RELATION_PHRASES[r])} {self.np(z)}")
        if n == 2 and len(groups) == 2:
            a, b = self.objects
            if a["colour"] == b["colour"]:
                fams.append(lambda: f"two {a['colour']} {shape_word} : {self.listing(self.shuffled())}")
            if a["shape"] == b["shape"]:
                fams.append(lambda: f"two {PLURALS[a['shape']]} : {self.listing(self.shuffled())}")
        if n == 3 and len({o["colour"] for o in self.objects}) == 1:
            fams.append(lambda: f"three {self.objects[0]['colour']} {shape_word}")
        if line is not None:
            kind, order = line
            reading = "from left to right" if kind == "row" else "from top to bottom"
            fams.append(lambda: f"{self.listing(order)} {reading}")
            fams.append(lambda: f"{self.listing(self.shuffled())} in a {kind}")
            if n == 3:
                fams.append(lambda: f"{self.np(order[1])} between "
                                    f"{self.listing(rng.sample([order[0], order[2]], 2))}")
        return fams

    def captions(self, count):
        fams = self.families()
        chosen = self.rng.sample(range(len(fams)), min(count, len(fams)))
        captions = []
        for k in chosen:
            text = fams[k]()
            if text not in captions:
                captions.append(text)
        attempts = 0
        while len(captions) < count:  # fewer families than captions wanted: re-roll the wording
            text = self.rng.choice(fams)()
            attempts += 1
            if text not in captions or attempts > 50:
                captions.append(text)
        return [_sentence_case(text) for text in captions]


def _sentence_case(text):
    text = text.replace(" : ", ": ").replace(" , ", ", ")
    return text[0].upper() + text[1:] + "."


def _attribute_words(objects, rng, drop_rate, spurious_rate):
    present = {o["colour"] for o in objects} | {o["shape"] for o in objects} | {o["size"] for o in objects}
    vocabulary = attribute_vocabulary()
    words = [w for w in vocabulary if w in present and not rng.random() < drop_rate]
    if rng.random() < spurious_rate:
        spurious = rng.choice([w for w in vocabulary if w not in present])
        words = [w for w in vocabulary if w in set(words) | {spurious}]
    return words


def _make_scene(split, index, seed, image_size, seen_pairs, all_pairs, forced_pair, options):
    rng = random.Random(f"glied-quickstart/{seed}/{split}/{index}")
    n = rng.choices((1, 2, 3), weights=(0.2, 0.4, 0.4))[0]
    objects = _sample_objects(rng, n, seen_pairs, all_pairs, forced_pair)
    extents = [_extent(o["size"], image_size, rng) for o in objects]
    corners = None
    if n == 1 or rng.random() < 0.3:
        corners = _scatter_layout(rng, extents, image_size)
    if corners is None:
        corners = _line_layout(rng, extents, image_size, horizontal=rng.random() < 0.5)
    image, boxes = _render(objects, corners, extents, image_size)
    captioner = _Captioner(rng, objects, boxes.tolist(), image_size)
    captions = captioner.captions(options["captions_per_image"])
    noise_rng = random.Random(f"glied-quickstart/{seed}/{split}/{index}/attributes")
    attributes = _attribute_words(objects, noise_rng, options["attribute_drop_rate"],
                                  options["attribute_spurious_rate"])
    relations = [[i, r, j] for (i, j), r in captioner.relations.items() if r is not None]
    return {
        "image_id": f"quickstart_{split}_{index:06d}",
        "split": split,
        "image": image,
        "boxes": boxes,
        "objects": objects,
        "captions": captions,
        "attributes": attributes,
        "novel": forced_pair is not None,
        "relations": relations,
    }


def generate_scenes(num_train=4000, num_val=250, num_test=250, image_size=96, seed=0, *,
                    held_out_pairs=HELD_OUT_PAIRS, novel_fraction=0.5, captions_per_image=5,
                    attribute_drop_rate=0.1, attribute_spurious_rate=0.1):
    """Generate the quick-start data set.

    Returns {"train": [...], "val": [...], "test": [...]}; each record is a dict with
    "image_id" (str), "split", "image" (RGB PIL.Image, image_size x image_size), "boxes" (float32 (n, 4), pixel
    xyxy, exclusive right / bottom edges), "objects" ([{"colour", "size", "shape"}], aligned with boxes),
    "captions" (captions_per_image strings), "attributes" (detector-like words), "novel" (True when the image
    holds a held-out (colour, shape) pair; never in train) and "relations" ([[i, relation, j]]: object i is
    left of / right of / above / below object j).
    """
    held_out, seen_pairs = _validate_options(num_train, num_val, num_test, image_size, held_out_pairs,
                                             novel_fraction, captions_per_image, attribute_drop_rate,
                                             attribute_spurious_rate)
    all_pairs = [(c, s) for c in COLOURS for s in SHAPES]
    options = {"captions_per_image": captions_per_image, "attribute_drop_rate": attribute_drop_rate,
               "attribute_spurious_rate": attribute_spurious_rate}
    scenes = {}
    for split, count in zip(SPLITS, (num_train, num_val, num_test)):
        records, novel_seen = [], 0
        for index in range(count):
            forced = None
            # novel images evenly interleaved: image i is novel when floor((i+1) f) > floor(i f)
            if split != "train" and math.floor((index + 1) * novel_fraction) > math.floor(index * novel_fraction):
                forced = held_out[novel_seen % len(held_out)]
                novel_seen += 1
            records.append(_make_scene(split, index, seed, image_size, seen_pairs, all_pairs, forced, options))
        scenes[split] = records
    return scenes


# ------------------------------------------------------------------------------------------------- writing


def write_karpathy_json(scenes, out_dir):
    """Write the images as PNG files under out_dir/<split>/ and the annotations in the Karpathy format.

    Files: out_dir/dataset_quickstart.json ({"images": [{"filepath", "filename", "imgid", "cocoid", "split",
    "sentids", "sentences": [{"raw", "tokens", "imgid", "sentid", "phrases"}], plus "image_id", "width", "height",
    "boxes", "objects", "novel"}], "dataset": "quickstart"}; an image's path is out_dir/filepath/filename) and
    out_dir/attributes.json ({image_id: [words]}; image_id is the file name without ".png"). "phrases" are the
    sentence's grounding annotations (`phrase_groundings`, see the module docstring).
    Returns {"dataset_json": Path, "attributes_json": Path, "image_root": Path}.
    """
    if not isinstance(scenes, dict) or not scenes:
        raise ValueError("scenes must be a non-empty dict split -> list of records (from generate_scenes)")
    out_dir = Path(out_dir)
    images, attributes, imgid, sentid = [], {}, 0, 0
    for split, records in scenes.items():
        if not isinstance(split, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", split):
            raise ValueError(f"split names must be plain folder names, got {split!r}")
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        for record in records:
            missing = [k for k in ("image_id", "image", "boxes", "objects", "captions", "attributes")
                       if k not in record]
            if missing:
                raise ValueError(f"record {record.get('image_id', '?')!r} lacks {missing}")
            image_id = record["image_id"]
            if image_id in attributes:
                raise ValueError(f"image_id {image_id!r} occurs twice")
            filename = f"{image_id}.png"
            target = out_dir / split / filename
            image = record["image"]
            if isinstance(image, Image.Image):
                image.save(target, format="PNG", compress_level=1)
            elif isinstance(image, (str, Path)):
                if not Path(image).is_file():
                    raise FileNotFoundError(f"image file of {image_id!r} not found: {image}")
                if Path(image).resolve() != target.resolve():
                    shutil.copyfile(image, target)
            else:
                raise ValueError(f"record {image_id!r}: image must be a PIL.Image or a path, got {type(image)}")
            if isinstance(image, Image.Image):
                width, height = image.size
            else:
                with Image.open(target) as written:
                    width, height = written.size
            sentences = []
            for raw in record["captions"]:
                tokens = split_caption(raw)
                sentences.append({"raw": raw, "tokens": tokens, "imgid": imgid, "sentid": sentid,
                                  "phrases": phrase_groundings(tokens, record["objects"], record["boxes"])})
                sentid += 1
            images.append({
                "filepath": split,
                "filename": filename,
                "imgid": imgid,
                "cocoid": imgid,
                "image_id": image_id,
                "split": split,
                "width": width,
                "height": height,
                "sentids": [s["sentid"] for s in sentences],
                "sentences": sentences,
                "boxes": np.asarray(record["boxes"], dtype=np.float32).reshape(-1, 4).tolist(),
                "objects": [dict(o) for o in record["objects"]],
                "novel": bool(record.get("novel", False)),
            })
            attributes[image_id] = list(record["attributes"])
            imgid += 1
    dataset_json = out_dir / "dataset_quickstart.json"
    attributes_json = out_dir / "attributes.json"
    dataset_json.write_text(json.dumps({"images": images, "dataset": "quickstart"}), encoding="utf-8")
    attributes_json.write_text(json.dumps(attributes), encoding="utf-8")
    return {"dataset_json": dataset_json, "attributes_json": attributes_json, "image_root": out_dir}


# ------------------------------------------------------------------------------------- phrase annotations

_COUNT_WORDS = {"a": 1, "an": 1, "the": 1, "one": 1, "two": 2, "three": 3}
_SHAPE_OF_PLURAL = {plural: shape for shape, plural in PLURALS.items()}


def _parse_object_phrase(tokens, start):
    """`(end, count or None, plural, size, colour, shape)` of an object phrase starting at tokens[start], or None.

    Grammar: `[a|an|the|one|two|three] [single (after a/an)] [small|large] colour shape(s)`.
    """
    j, count = start, None
    if tokens[j] in _COUNT_WORDS:
        count, j = _COUNT_WORDS[tokens[j]], j + 1
        if tokens[start] in ("a", "an") and j < len(tokens) and tokens[j] == "single":
            j += 1
    size = None
    if j < len(tokens) and tokens[j] in SIZES:
        size, j = tokens[j], j + 1
    if j >= len(tokens) or tokens[j] not in COLOURS:
        return None
    colour, j = tokens[j], j + 1
    if j >= len(tokens):
        return None
    noun = tokens[j]
    if noun in SHAPES:
        plural, shape = False, noun
    elif noun in _SHAPE_OF_PLURAL:
        plural, shape = True, _SHAPE_OF_PLURAL[noun]
    else:
        return None
    if count is not None and (count > 1) != plural:
        return None  # "a red circles", "two red circle": not a phrase of the grammar
    return j + 1, count, plural, size, colour, shape


def phrase_groundings(tokens, objects, boxes):
    """Grounding annotations of one caption: the noun phrases that name objects by colour and shape.

    Args:
        tokens: the caption's words (`split_caption(raw)`).
        objects: the scene's objects, [{"colour", "size", "shape"}]; boxes: their pixel boxes (n, 4), aligned.

    Returns:
        [{"first_word_index", "phrase", "boxes", "ambiguous"}] in text order (see the module docstring). A phrase
        is matched to the objects of its size (when it names one), colour and shape; plural phrases take all of
        them and are left out when their count disagrees; a singular phrase matching several objects lists them
        all with "ambiguous": True; a phrase matching none is left out.
    """
    tokens = list(tokens)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if len(boxes) != len(objects):
        raise ValueError(f"{len(objects)} objects but {len(boxes)} boxes: they must be aligned")
    annotations, i = [], 0
    while i < len(tokens):
        parsed = _parse_object_phrase(tokens, i)
        if parsed is None:
            i += 1
            continue
        end, count, plural, size, colour, shape = parsed
        found = [k for k, o in enumerate(objects)
                 if o["colour"] == colour and o["shape"] == shape and size in (None, o["size"])]
        consistent = bool(found) and (not plural or count is None or len(found) == count)
        if consistent:
            annotations.append({
                "first_word_index": i,
                "phrase": " ".join(tokens[i:end]),
                "boxes": [[float(v) for v in boxes[k]] for k in found],
                "ambiguous": not plural and len(found) > 1,
            })
        i = end
    return annotations


def _object_records(source, split):
    """(records of `split`, pairs seen in train or None) from a dataset JSON path, a generate_scenes dict or a
    list of records; a record needs "image_id" and "objects" ("split" to be filtered)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"quick-start dataset JSON {path} does not exist")
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise ValueError(f"{path} is not a Karpathy-style JSON with an 'images' list")
        records = data["images"]
    elif isinstance(source, dict):
        records = [record for split_records in source.values() for record in split_records]
    elif isinstance(source, (list, tuple)):
        records = list(source)
    else:
        raise ValueError(f"expected a dataset JSON path, a generate_scenes dict or a list of records, got "
                         f"{type(source).__name__}")
    for record in records:
        if not isinstance(record, dict) or "image_id" not in record or "objects" not in record:
            raise ValueError("every quick-start record needs 'image_id' and 'objects' (a generated JSON or "
                             "generate_scenes output)")
    train = [r for r in records if r.get("split") == "train"]
    seen = {(o["colour"], o["shape"]) for r in train for o in r["objects"]} if train else None
    if any("split" in r for r in records):
        records = [r for r in records if r.get("split") == split]
    return records, seen


def quickstart_phrase_queries(source, split="test", held_out_pairs=HELD_OUT_PAIRS, sizes=True):
    """Phrase-level retrieval queries over the images of `split`: one per (colour, shape) pair present.

    Args:
        source: the generated dataset JSON (path), the dict of `generate_scenes`, or a list of records.
        split: the split whose images are ranked.
        held_out_pairs: the pairs that are novel when `source` holds no train images; with train images, a
            pair is novel when no train image holds it (never seen in training, what "novel" means).
        sizes: also one query per (size, colour, shape) triple present ("a small red circle").

    Returns:
        [{"query": "a red circle", "relevant": [image ids holding such an object, in split order], "colour",
        "shape", "size" (None or "small"/"large"), "novel": bool}], pairs in COLOURS x SHAPES order, the
        size-free query of a pair first. Raises ValueError when the split has no image.
    """
    records, seen = _object_records(source, split)
    if not records:
        raise ValueError(f"no image of split {split!r} to build phrase queries on")
    held_out = {tuple(pair) for pair in held_out_pairs}
    queries = []
    for colour in COLOURS:
        for shape in SHAPES:
            novel = (colour, shape) not in seen if seen is not None else (colour, shape) in held_out
            for size in (None, *SIZES) if sizes else (None,):
                relevant = [str(r["image_id"]) for r in records
                            if any(o["colour"] == colour and o["shape"] == shape and size in (None, o["size"])
                                   for o in r["objects"])]
                if not relevant:
                    continue
                words = " ".join(([size] if size else []) + [colour, shape])
                queries.append({"query": f"{_article(words)} {words}", "relevant": relevant, "colour": colour,
                                "shape": shape, "size": size, "novel": novel})
    return queries


QUICKSTART_EXTRACTOR = {"detector": "components", "backbone": "pixels", "max_regions": 8}


def prepare_quickstart_data(out_dir, num_train=4000, num_val=250, num_test=250, image_size=96, seed=0,
                            extractor=None, progress=True):
    """Everything a training run needs, from nothing: scenes, the Karpathy-style JSON, attribute words, and the
    region features of every image (the extractor's connected-components detector and pixel descriptor: the
    extractor a trained quick-start model is saved with, so `pipeline("image-to-text")` captions raw images the
    same way), written as a self-critical-style ``.npz`` directory and converted to a feature store.

    Returns {"dataset_json", "attributes_json", "image_root", "features", "region_extractor"}.
    """
    from .feature_stores import convert_feature_store
    from .image_regions import RegionFeatureExtractor

    out_dir = Path(out_dir)
    description = dict(QUICKSTART_EXTRACTOR, **(extractor or {}))
    region_extractor = RegionFeatureExtractor(**description)
    scenes = generate_scenes(num_train=num_train, num_val=num_val, num_test=num_test, image_size=image_size,
                             seed=seed)
    paths = write_karpathy_json(scenes, out_dir)
    npz_dir = out_dir / "features_npz"
    npz_dir.mkdir(parents=True, exist_ok=True)
    records = [record for split in scenes.values() for record in split]
    outputs = region_extractor([r["image"] for r in records], batch_size=64, progress=progress)
    for record, output in zip(records, outputs):
        width, height = output["image_size"]
        pixel_boxes = output["region_boxes"] * np.array([width, height, width, height], dtype=np.float32)
        np.savez(npz_dir / f"{record['image_id']}.npz", feat=output["region_features"], boxes=pixel_boxes,
                 image_w=width, image_h=height)
    features = convert_feature_store(npz_dir, out_dir / "features", format="npz", progress=progress,
                                     overwrite=True)
    shutil.rmtree(npz_dir)
    return {**paths, "features": Path(features), "region_extractor": region_extractor.to_dict()}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Generate the glied quick-start captioning data set.")
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--num_train", type=int, default=4000)
    parser.add_argument("--num_val", type=int, default=250)
    parser.add_argument("--num_test", type=int, default=250)
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    scenes = generate_scenes(args.num_train, args.num_val, args.num_test, args.image_size, args.seed)
    generated = time.perf_counter()
    paths = write_karpathy_json(scenes, args.out_dir)
    written = time.perf_counter()
    total = sum(len(v) for v in scenes.values())
    print(f"generated {total} scenes in {generated - start:.2f} s, wrote them in {written - generated:.2f} s: "
          f"{paths['dataset_json']}, {paths['attributes_json']}")
    return paths


if __name__ == "__main__":
    main()
