import json

import numpy as np
import pytest

from processing.flickr30k_entities import add_flickr30k_entities, parse_entities_annotation, parse_entities_sentence
from processing.retrieval_evaluation import load_phrase_annotations
from processing.tokenization_glied import split_caption

SENTENCES = [
    "[/EN#18/people A young , white boy] wearing [/EN#19/clothing a blue shirt] plays on [/EN#20/scene grass] .",
    "[/EN#18/people A boy] and [/EN#21/animals two dogs] .",
]
XML = """<annotation><filename>100.jpg</filename><size><width>200</width><height>100</height><depth>3</depth></size>
<object><name>18</name><bndbox><xmin>11</xmin><ymin>21</ymin><xmax>60</xmax><ymax>90</ymax></bndbox></object>
<object><name>19</name><name>18</name><bndbox><xmin>21</xmin><ymin>41</ymin><xmax>50</xmax><ymax>70</ymax></bndbox>
</object>
<object><name>21</name><bndbox><xmin>101</xmin><ymin>1</ymin><xmax>150</xmax><ymax>50</ymax></bndbox></object>
<object><name>21</name><bndbox><xmin>151</xmin><ymin>1</ymin><xmax>200</xmax><ymax>50</ymax></bndbox></object>
<object><name>20</name><nobndbox>1</nobndbox><scene>1</scene></object></annotation>"""


def test_sentence_phrases_index_the_caption_tokenizer_words():
    text, phrases = parse_entities_sentence(SENTENCES[0])
    assert text == "A young , white boy wearing a blue shirt plays on grass ."
    words = split_caption(text)
    assert [(p["first_word_index"], p["entity_id"], p["types"]) for p in phrases] == [
        (0, "18", ["people"]), (5, "19", ["clothing"]), (10, "20", ["scene"])]
    for phrase in phrases:
        span = split_caption(phrase["phrase"])
        assert words[phrase["first_word_index"]:phrase["first_word_index"] + len(span)] == span
    with pytest.raises(ValueError, match="unclosed"):
        parse_entities_sentence("a [/EN#1/people man")


def test_annotation_boxes_become_zero_based_and_shared_boxes_go_to_every_name(tmp_path):
    (tmp_path / "100.xml").write_text(XML)
    width, height, boxes = parse_entities_annotation(tmp_path / "100.xml")
    assert (width, height) == (200, 100)
    assert boxes["18"] == [[10.0, 20.0, 60.0, 90.0], [20.0, 40.0, 50.0, 70.0]]
    assert boxes["19"] == [[20.0, 40.0, 50.0, 70.0]] and len(boxes["21"]) == 2 and "20" not in boxes
    (tmp_path / "bad.xml").write_text("<annotation><size><width>x</width></size></annotation>")
    with pytest.raises(ValueError, match="size"):
        parse_entities_annotation(tmp_path / "bad.xml")
    with pytest.raises(FileNotFoundError):
        parse_entities_annotation(tmp_path / "missing.xml")


def test_add_entities_to_a_karpathy_json_and_read_them_back(tmp_path):
    entities = tmp_path / "flickr30k_entities"
    (entities / "Sentences").mkdir(parents=True)
    (entities / "Annotations").mkdir()
    (entities / "Sentences" / "100.txt").write_text("\n".join(SENTENCES) + "\n")
    (entities / "Annotations" / "100.xml").write_text(XML)
    karpathy = {"dataset": "flickr30k", "images": [
        {"filename": "100.jpg", "imgid": 0, "split": "test", "sentences": [
            {"raw": "A young, white boy wearing a blue shirt plays on grass.", "imgid": 0, "sentid": 0},
            {"raw": "A boy and two dogs.", "imgid": 0, "sentid": 1},
            {"raw": "A sentence that Entities does not have.", "imgid": 0, "sentid": 2}]},
        {"filename": "200.jpg", "imgid": 1, "split": "test", "sentences": [{"raw": "a cat", "imgid": 1, "sentid": 3}]},
    ]}
    source = tmp_path / "dataset_flickr30k.json"
    source.write_text(json.dumps(karpathy))
    counts = add_flickr30k_entities(source, entities, tmp_path / "out" / "with_entities.json")
    assert counts == {"images": 1, "images_without_entities": 1, "sentences": 2, "sentences_unmatched": 1,
                      "phrases": 4, "phrases_without_box": 1}
    written = json.loads((tmp_path / "out" / "with_entities.json").read_text())
    first = written["images"][0]
    assert (first["width"], first["height"]) == (200, 100)
    assert [p["phrase"] for p in first["sentences"][0]["phrases"]] == ["A young , white boy", "a blue shirt"]
    assert "phrases" not in first["sentences"][2]

    annotations = load_phrase_annotations(tmp_path / "out" / "with_entities.json")
    assert list(annotations) == ["100"]
    dogs = annotations["100"][1][1]
    assert dogs["first_word_index"] == 3 and dogs["words"] == ["two", "dogs"]
    np.testing.assert_allclose(dogs["boxes"], [[0.5, 0.0, 0.75, 0.5], [0.75, 0.0, 1.0, 0.5]])
    with pytest.raises(FileNotFoundError, match="Sentences"):
        add_flickr30k_entities(source, tmp_path, tmp_path / "x.json")
