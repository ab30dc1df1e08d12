"""Flickr30K Entities phrase boxes -> the phrase annotations of a Karpathy split JSON (region-phrase grounding).

Flickr30K Entities (Plummer et al., 2015) ships, per image, `Sentences/<id>.txt` (the five captions, with every
annotated phrase in brackets: ``[/EN#283585/people A young white boy] wearing [/EN#283589/clothing a blue
shirt]``) and `Annotations/<id>.xml` (Pascal VOC style: the image size, and objects whose ``<name>`` elements are
entity ids with a ``<bndbox>``, or ``<nobndbox>1`` for scene and non-visual entities). `add_flickr30k_entities`
copies `dataset_flickr30k.json` (Karpathy) and gives every sentence a ``"phrases"`` list in the format
`processing.retrieval_evaluation.load_phrase_annotations` reads:
``[{"first_word_index", "phrase", "boxes": [[x1, y1, x2, y2], ...], "entity_id", "types"}]``, plus the image's
``width`` and ``height``.

Decisions: word indices count the words of `split_caption` (the caption tokenizer's words), so punctuation in the
Entities text does not shift them; a Karpathy sentence is matched to the Entities sentence with the same words
(the files list them in the same order; the words decide); phrases whose entity has no box are left out (the
grounding protocol scores boxed phrases only); VOC's 1-based inclusive pixel corners become 0-based corners with
exclusive right/bottom edges (``x1 = xmin - 1``, ``x2 = xmax``).

    python -m processing.flickr30k_entities --karpathy dataset_flickr30k.json --entities flickr30k_entities \\
        --output dataset_flickr30k_entities.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from .tokenization_glied import split_caption

__all__ = ["add_flickr30k_entities", "parse_entities_annotation", "parse_entities_sentence"]

_PHRASE = re.compile(r"\[/EN#(\d+)((?:/[^\s\]]+)*)\s+([^\]]*)\]")


def parse_entities_sentence(line):
    """One line of `Sentences/<id>.txt` -> `(plain text, [{"first_word_index", "phrase", "entity_id", "types"}])`."""
    if not isinstance(line, str):
        raise ValueError(f"an Entities sentence must be a string, got {type(line).__name__}")
    plain, phrases, position, words_before = [], [], 0, 0
    for match in _PHRASE.finditer(line):
        before = line[position:match.start()]
        plain.append(before)
        words_before += len(split_caption(before))
        text = match.group(3).strip()
        if split_caption(text):
            phrases.append({"first_word_index": words_before, "phrase": text, "entity_id": match.group(1),
                            "types": [t for t in match.group(2).split("/") if t]})
        plain.append(text)
        words_before += len(split_caption(text))
        position = match.end()
    rest = line[position:]
    if "[/EN#" in rest:
        raise ValueError(f"malformed Entities phrase (an unclosed '[/EN#...' bracket) in {line!r}")
    plain.append(rest)
    return re.sub(r"\s+", " ", "".join(plain)).strip(), phrases


def parse_entities_annotation(path):
    """`Annotations/<id>.xml` -> `(width, height, {entity id: [[x1, y1, x2, y2], ...]})` (0-based pixel corners,
    exclusive right/bottom edges); entities without a box are absent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Flickr30K Entities annotation {path} does not exist")
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise ValueError(f"{path} is not valid XML: {error}") from None
    size = root.find("size")
    try:
        width, height = int(size.findtext("width")), int(size.findtext("height"))
    except (AttributeError, TypeError, ValueError):
        raise ValueError(f"{path} has no <size> with integer <width> and <height>") from None
    boxes = {}
    for number, obj in enumerate(root.iter("object")):
        box = obj.find("bndbox")
        if box is None:
            continue
        try:
            xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise ValueError(f"{path}: object {number} has a <bndbox> without numeric xmin/ymin/xmax/ymax") from None
        if xmax < xmin or ymax < ymin:
            raise ValueError(f"{path}: object {number} has xmax < xmin or ymax < ymin")
        for name in obj.findall("name"):
            boxes.setdefault(name.text.strip(), []).append([xmin - 1.0, ymin - 1.0, xmax, ymax])
    return width, height, boxes


def add_flickr30k_entities(karpathy_json, entities_dir, output_json):
    """Write `output_json`: `karpathy_json` with the Flickr30K Entities phrase boxes of `entities_dir` (the folder
    holding `Sentences/` and `Annotations/`). Returns counts: images annotated / without Entities files, sentences
    matched / unmatched, phrases with boxes / without."""
    karpathy_json, entities_dir, output_json = Path(karpathy_json), Path(entities_dir), Path(output_json)
    if not karpathy_json.is_file():
        raise FileNotFoundError(f"Karpathy split JSON {karpathy_json} does not exist")
    for sub in ("Sentences", "Annotations"):
        if not (entities_dir / sub).is_dir():
            raise FileNotFoundError(f"{entities_dir} has no {sub}/ folder: give the Flickr30K Entities folder")
    data = json.loads(karpathy_json.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{karpathy_json} is not a Karpathy split JSON (no 'images' list)")
    counts = dict.fromkeys(("images", "images_without_entities", "sentences", "sentences_unmatched",
                            "phrases", "phrases_without_box"), 0)
    for image in data["images"]:
        stem = os.path.splitext(os.path.basename(str(image.get("filename", ""))))[0]
        sentences_file = entities_dir / "Sentences" / f"{stem}.txt"
        annotation_file = entities_dir / "Annotations" / f"{stem}.xml"
        if not stem or not sentences_file.is_file() or not annotation_file.is_file():
            counts["images_without_entities"] += 1
            continue
        width, height, boxes = parse_entities_annotation(annotation_file)
        parsed = [parse_entities_sentence(line) for line in sentences_file.read_text(encoding="utf-8").splitlines()
                  if line.strip()]
        by_words = {}
        for text, phrases in parsed:
            by_words.setdefault(tuple(split_caption(text)), phrases)
        image["width"], image["height"] = width, height
        counts["images"] += 1
        for sentence in image.get("sentences", []):
            phrases = by_words.get(tuple(split_caption(str(sentence.get("raw", "")))))
            if phrases is None:
                counts["sentences_unmatched"] += 1
                continue
            counts["sentences"] += 1
            boxed = [dict(p, boxes=boxes[p["entity_id"]]) for p in phrases if p["entity_id"] in boxes]
            counts["phrases"] += len(boxed)
            counts["phrases_without_box"] += len(phrases) - len(boxed)
            sentence["phrases"] = boxed
    output_json.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_json.with_name(f".{output_json.name}.tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, output_json)
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--karpathy", required=True, help="dataset_flickr30k.json (Karpathy split)")
    parser.add_argument("--entities", required=True, help="the Flickr30K Entities folder (Sentences/, Annotations/)")
    parser.add_argument("--output", required=True, help="the Karpathy JSON with phrase boxes to write")
    args = parser.parse_args(argv)
    counts = add_flickr30k_entities(args.karpathy, args.entities, args.output)
    print(json.dumps(counts, indent=2))
    return counts


if __name__ == "__main__":
    main()
