"""examples/retrieve.py and processing/retrieval_index.py: index a folder of raw images, search it with a sentence,
rank sentences for one image; contact sheets; clear errors."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from modeling_glied import HMLSTMConfig, HMLSTMModel
from processing.image_regions import PIXEL_FEATURE_SIZE, RegionFeatureExtractor
from processing.processing_hmlstm import HMLSTMProcessor
from processing.quickstart_data import generate_scenes
from processing.retrieval_index import (
    FLAT_MODEL_NOTE,
    METADATA_KEY,
    IndexMismatchError,
    RetrievalIndex,
    annotate_image,
    index_folder,
    load_retrieval_model,
    model_fingerprint,
    phrase_region_matches,
    search_index,
)
from test_hub_push import load_example
from test_pipeline import one_thread  # noqa: F401  (fixture)

EXTRACTOR = {"detector": "components", "backbone": "pixels", "max_regions": 8}
QUERY = "a small red circle to the left of a blue square"


def save_model(folder, captions, seed=0, hierarchical=True, region_extractor=EXTRACTOR):
    processor = HMLSTMProcessor.from_captions(captions, count_threshold=0, region_feature_size=PIXEL_FEATURE_SIZE,
                                              max_regions=8, max_sentence_length=24, phrase_backend="rules",
                                              region_extractor=region_extractor)
    torch.manual_seed(seed)
    config = HMLSTMConfig(vocab_size=len(processor.tokenizer), word_embedding_size=8, hidden_size=8,
                          embedding_size=8, region_feature_size=PIXEL_FEATURE_SIZE, hierarchical=hierarchical,
                          initializer_range=0.5)
    model = HMLSTMModel(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieve")
    scenes = generate_scenes(num_train=7, num_val=0, num_test=0, image_size=64, seed=3)["train"]
    images = root / "images"
    images.mkdir()
    for scene in scenes:
        scene["image"].save(images / f"{scene['image_id']}.png")
    captions = [caption for scene in scenes for caption in scene["captions"]]
    return {"root": root, "images": images, "captions": captions, "scenes": scenes,
            "paths": sorted(str(p.resolve()) for p in images.glob("*.png")),
            "model": save_model(root / "model", captions),
            "flat": save_model(root / "flat", captions, hierarchical=False),
            "other": save_model(root / "other", captions, seed=1),
            "no_extractor": save_model(root / "no_extractor", captions, region_extractor=None)}


@pytest.fixture(scope="module")
def script():
    return load_example("retrieve")


@pytest.fixture(scope="module")
def indexed(tiny, script):
    index = tiny["root"] / "scenes.safetensors"
    script.main(["index", "--model", str(tiny["model"]), "--images", str(tiny["images"]), "--index", str(index)])
    return index


def long_way(model_dir, paths, query):
    """The model's outputs for the images and the query, the long way: extractor -> processor -> model, no index."""
    model, processor = load_retrieval_model(model_dir)
    outputs = RegionFeatureExtractor.from_dict(EXTRACTOR)(paths)
    images = processor(region_features=[o["region_features"] for o in outputs],
                       region_boxes=[o["region_boxes"] for o in outputs])
    text = processor(sentences=[query])
    with torch.no_grad():
        image_embeds, regions = model.embed_images(images["region_features"], images["region_mask"],
                                                   images["region_boxes"])
        sentence, phrases = model.embed_sentences(text["input_ids"], text["attention_mask"], text["phrase_spans"],
                                                  text["phrase_mask"])
    return {"model": model, "images": image_embeds, "regions": regions, "region_mask": images["region_mask"],
            "sentence": sentence, "phrases": phrases}


def brute_force_scores(model_dir, paths, query):
    """cos(image, query) for every image, the long way."""
    out = long_way(model_dir, paths, query)
    return (out["images"] @ out["sentence"][0]).numpy()


def table_rows(output):
    """(rank, score, path) of the printed table rows."""
    rows = []
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].isdigit():
            rows.append((int(parts[0]), float(parts[1]), parts[2]))
    return rows


def check_sheet(path, min_width, min_height):
    with Image.open(path) as sheet:
        assert sheet.format == "PNG"
        width, height = sheet.size
        pixels = np.asarray(sheet.convert("RGB"))
    assert min_width <= width <= 4000 and min_height <= height <= 4000, sheet.size
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # a drawing, not a blank page
    return pixels


# ---------------------------------------------------------------------------------------------------- search


def test_search_ranks_like_the_model_and_draws_a_sheet(tiny, script, indexed, tmp_path, capsys):
    capsys.readouterr()
    sheet = tmp_path / "sheet.png"
    result = script.main(["search", "--model", str(tiny["model"]), "--index", str(indexed), "--query", QUERY,
                          "--top-k", "5", "--sheet", str(sheet)])
    out = capsys.readouterr().out
    scores = brute_force_scores(tiny["model"], tiny["paths"], QUERY)
    expected = np.argsort(-scores, kind="stable")[:5]
    hits = result["hits"]
    assert [hit.row for hit in hits] == expected.tolist()
    np.testing.assert_allclose([hit.score for hit in hits], scores[expected], atol=1e-5)
    rows = table_rows(out)
    assert [rank for rank, _, _ in rows] == [1, 2, 3, 4, 5]
    assert [os.path.abspath(path) for _, _, path in rows] == [tiny["paths"][row] for row in expected]
    np.testing.assert_allclose([score for _, score, _ in rows], scores[expected], atol=1e-4)
    phrases = [text for text, _ in result["query"].phrases]
    assert len(phrases) >= 2 and f"phrases: {', '.join(map(repr, phrases))}" in out
    assert all(len(hit.matches) == len(phrases) for hit in hits)
    # 4 columns of 64-pixel images upscaled to at least 192 pixels each, two rows
    check_sheet(sheet, 4 * 192, 2 * 192)


def test_each_phrase_outlines_its_argmax_region(tiny, indexed):
    model, processor = load_retrieval_model(tiny["model"])
    index = RetrievalIndex.load(indexed, expected_fingerprint=model_fingerprint(model, processor))
    hits, query = search_index(index, model, processor, QUERY, top_k=len(index))
    assert len(hits) == len(tiny["paths"])
    spans = torch.tensor([[span for _, span in query.phrases]])
    text = processor(sentences=[QUERY])
    with torch.no_grad():
        _, phrases = model.embed_sentences(text["input_ids"], text["attention_mask"], spans)
    np.testing.assert_allclose(query.phrase_embeds, phrases[0].numpy(), atol=1e-6)
    for hit in hits:
        embeds, boxes, labels = index.regions_of(hit.row)
        cosines = query.phrase_embeds @ embeds.T
        assert [m.region for m in hit.matches] == cosines.argmax(axis=1).tolist()
        np.testing.assert_allclose([m.score for m in hit.matches], cosines.max(axis=1), atol=1e-6)
        for match in hit.matches:
            np.testing.assert_array_equal(match.box, boxes[match.region])
            assert match.label == labels[match.region]


def test_phrase_region_matches_skips_padding_and_agrees_with_the_model():
    generator = np.random.default_rng(0)
    phrases = generator.standard_normal((3, 6)).astype(np.float32)
    regions = generator.standard_normal((5, 6)).astype(np.float32)
    phrases /= np.linalg.norm(phrases, axis=1, keepdims=True)
    regions /= np.linalg.norm(regions, axis=1, keepdims=True)
    cosines = phrases @ regions.T
    best, scores = phrase_region_matches(phrases, regions)
    assert best.tolist() == cosines.argmax(axis=1).tolist()
    mask = np.ones(5, bool)
    mask[best[0]] = False  # the first phrase's favourite is padding: the runner-up wins
    masked, masked_scores = phrase_region_matches(phrases, regions, mask)
    assert masked[0] != best[0] and masked[0] == np.where(mask, cosines[0], -np.inf).argmax()
    model = HMLSTMModel(HMLSTMConfig(vocab_size=8, word_embedding_size=4, hidden_size=4, embedding_size=6,
                                     region_feature_size=4))
    expected = model.phrase_image_similarity(torch.from_numpy(phrases)[None], torch.from_numpy(regions)[None],
                                             torch.from_numpy(mask)[None])[0, :, 0]
    np.testing.assert_allclose(masked_scores, expected.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="at least one valid region"):
        phrase_region_matches(phrases, regions, np.zeros(5, bool))


def test_flat_model_ranks_without_outlines_and_says_so(tiny, script, tmp_path, capsys):
    index = tmp_path / "flat"  # a folder: the index goes in as retrieval_index.safetensors
    script.main(["index", "--model", str(tiny["flat"]), "--images", str(tiny["images"]), "--index", str(index)])
    assert (index / "retrieval_index.safetensors").is_file()
    capsys.readouterr()
    sheet = tmp_path / "flat.png"
    result = script.main(["search", "--model", str(tiny["flat"]), "--index", str(index), "--query", QUERY,
                          "--top-k", "3", "--sheet", str(sheet)])
    out = capsys.readouterr().out
    assert FLAT_MODEL_NOTE in out
    assert result["query"].phrases == [] and all(hit.matches == [] for hit in result["hits"])
    scores = brute_force_scores(tiny["flat"], tiny["paths"], QUERY)
    assert [hit.row for hit in result["hits"]] == np.argsort(-scores, kind="stable")[:3].tolist()
    check_sheet(sheet, 3 * 192, 192)


# ---------------------------------------------------------------------------------------------------- annotate


def test_annotate_ranks_sentences_by_score(tiny, script, tmp_path, capsys):
    sentences = [tiny["scenes"][k]["captions"][0] for k in range(4)] + ["two blue squares"]
    listing = tmp_path / "sentences.txt"
    listing.write_text("\n".join(sentences[:2]) + "\n\n" + "\n".join(sentences[2:]) + "\n")
    image = tiny["paths"][2]
    capsys.readouterr()
    sheet = tmp_path / "annotated.png"
    result = script.main(["annotate", "--model", str(tiny["model"]), "--image", image, "--sentences", str(listing),
                          "--top-k", "3", "--sheet", str(sheet)])
    out = capsys.readouterr().out
    hits = result["hits"]
    assert len(hits) == 3 and [hit.rank for hit in hits] == [1, 2, 3]
    model, processor = load_retrieval_model(tiny["model"])
    every = annotate_image(model, processor, image, sentences)["hits"]
    assert sorted(hit.row for hit in every) == list(range(len(sentences)))
    assert [hit.score for hit in every] == sorted((hit.score for hit in every), reverse=True)
    brute = [brute_force_scores(tiny["model"], [image], text)[0] for text in sentences]
    np.testing.assert_allclose([brute[hit.row] for hit in every], [hit.score for hit in every], atol=1e-5)
    assert [hit.name for hit in hits] == [sentences[hit.row] for hit in every[:3]]
    assert [row[2] for row in table_rows(out)] == [hit.name.split()[0] for hit in hits]
    assert len(hits[0].matches) == len(result["queries"][hits[0].row].phrases) > 0
    check_sheet(sheet, 400, 400)


# ---------------------------------------------------------------------------------------------------- index


def test_index_file_holds_tensors_and_json_metadata(tiny, indexed):
    with safe_open(str(indexed), framework="np") as opened:
        names = set(opened.keys())
        metadata = json.loads(opened.metadata()[METADATA_KEY])
        mask = opened.get_tensor("region_mask")
        boxes = opened.get_tensor("region_boxes")
    assert names == {"image_embeds", "region_embeds", "region_mask", "region_boxes", "image_sizes"}
    assert [image["path"] for image in metadata["images"]] == [f"images/{os.path.basename(p)}" for p in tiny["paths"]]
    assert metadata["hierarchical"] is True and metadata["region_extractor"]["detector"] == "components"
    assert mask.shape[0] == len(tiny["paths"]) and mask.sum(axis=1).min() >= 2  # the whole image and a shape
    assert boxes.min() >= 0.0 and boxes.max() <= 1.0
    assert not [p for p in os.listdir(indexed.parent) if p.endswith(".tmp")]


def test_reindexing_embeds_only_new_or_changed_images(tiny, script, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(tiny["images"], images)
    model, processor = load_retrieval_model(tiny["model"])
    target = tmp_path / "index.safetensors"
    first, counts = index_folder(model, processor, images, target, batch_size=3, progress=False)
    assert counts == {"embedded": 7, "reused": 0, "dropped": 0, "skipped": 0, "rebuilt": False}
    _, counts = index_folder(model, processor, images, target, progress=False)
    assert counts["embedded"] == 0 and counts["reused"] == 7
    names = sorted(os.listdir(images))
    os.remove(images / names[0])
    shutil.copy(images / names[2], images / names[1])  # changed bytes
    (images / "broken.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="broken.png"):
        again, counts = index_folder(model, processor, images, target, progress=False)
    assert counts == {"embedded": 1, "reused": 5, "dropped": 1, "skipped": 1, "rebuilt": False}
    loaded = RetrievalIndex.load(target)
    assert [os.path.basename(p) for p in loaded.paths] == names[1:]
    np.testing.assert_allclose(loaded.image_embeds[0], loaded.image_embeds[1], atol=1e-6)  # the copy
    np.testing.assert_allclose(loaded.image_embeds[1:], first.image_embeds[2:], atol=1e-6)
    other, other_processor = load_retrieval_model(tiny["other"])
    with pytest.warns(UserWarning, match="broken.png"):
        _, counts = index_folder(other, other_processor, images, target, progress=False)
    assert counts["rebuilt"] and counts["embedded"] == 6 and counts["reused"] == 0


# ---------------------------------------------------------------------------------------------------- errors


def run_error(script, capsys, argv):
    capsys.readouterr()
    with pytest.raises(SystemExit) as raised:
        script.main(argv)
    assert raised.value.code == 2
    return capsys.readouterr().err


def test_missing_empty_or_foreign_inputs_give_clear_errors(tiny, script, indexed, tmp_path, capsys):
    model = ["--model", str(tiny["model"])]
    err = run_error(script, capsys, ["index", *model, "--images", str(tmp_path / "nowhere"), "--index",
                                     str(tmp_path / "i.safetensors")])
    assert "image folder not found" in err and "nowhere" in err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    err = run_error(script, capsys, ["index", *model, "--images", str(tmp_path / "empty"), "--index",
                                     str(tmp_path / "i.safetensors")])
    assert "no image files" in err
    err = run_error(script, capsys, ["search", "--model", str(tmp_path / "no-model"), "--index", str(indexed),
                                     "--query", QUERY])
    assert "model folder not found" in err
    err = run_error(script, capsys, ["search", *model, "--index", str(tmp_path / "missing.safetensors"),
                                     "--query", QUERY])
    assert "retrieval index not found" in err
    err = run_error(script, capsys, ["search", "--model", str(tiny["other"]), "--index", str(indexed),
                                     "--query", QUERY])
    assert "built with another model" in err and "Re-index" in err
    err = run_error(script, capsys, ["search", *model, "--index", str(indexed), "--query", " ?! "])
    assert "the query is empty" in err
    err = run_error(script, capsys, ["search", *model, "--index", str(indexed), "--query", QUERY, "--top-k", "0"])
    assert "--top-k must be at least 1" in err
    err = run_error(script, capsys, ["index", "--model", str(tiny["no_extractor"]), "--images", str(tiny["images"]),
                                     "--index", str(tmp_path / "i.safetensors")])
    assert "no region_extractor setting" in err and "processor.region_extractor = " in err
    assert not (tmp_path / "i.safetensors").exists()
    err = run_error(script, capsys, ["annotate", *model, "--image", tiny["paths"][0], "--sentences",
                                     str(tmp_path / "none.txt")])
    assert "sentence file not found" in err
    (tmp_path / "blank.txt").write_text("\n  \n")
    err = run_error(script, capsys, ["annotate", *model, "--image", tiny["paths"][0], "--sentences",
                                     str(tmp_path / "blank.txt")])
    assert "no sentence in" in err
    (tmp_path / "bad.txt").write_text("a red circle\n...\n")
    err = run_error(script, capsys, ["annotate", *model, "--image", tiny["paths"][0], "--sentences",
                                     str(tmp_path / "bad.txt")])
    assert "sentence 2 of 2 is empty" in err
    err = run_error(script, capsys, ["annotate", *model, "--image", str(tmp_path / "no.png"), "--sentences",
                                     str(tmp_path / "bad.txt")])
    assert "image file not found" in err


def test_the_library_refuses_a_mismatching_index(tiny, indexed):
    model, processor = load_retrieval_model(tiny["other"])
    with pytest.raises(IndexMismatchError, match="built with another model"):
        RetrievalIndex.load(indexed, expected_fingerprint=model_fingerprint(model, processor))
    same, same_processor = load_retrieval_model(tiny["model"])
    assert model_fingerprint(same, same_processor) == RetrievalIndex.load(indexed).fingerprint
    (tiny["root"] / "plain.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(ValueError, match="not a retrieval index"):
        RetrievalIndex.load(tiny["root"] / "plain.safetensors")


def test_a_hub_repository_id_works_like_a_folder(tiny, local_hub):
    from huggingface_hub import HfApi

    from processing.retrieval_index import load_retrieval_model, model_fingerprint

    api = HfApi()
    api.create_repo("user/hmlstm-tiny")
    api.upload_folder(repo_id="user/hmlstm-tiny", folder_path=str(tiny["model"]))
    from_hub = load_retrieval_model("user/hmlstm-tiny")
    local = load_retrieval_model(tiny["model"])
    assert model_fingerprint(*from_hub) == model_fingerprint(*local)
    with pytest.raises(FileNotFoundError, match="no Hub repository"):
        load_retrieval_model("user/no-such-model")
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        load_retrieval_model(tiny["root"] / "missing")


def test_rank_by_phrases_and_both_rank_like_the_model_phrase_scores(tiny, script, indexed, capsys):
    out = long_way(tiny["model"], tiny["paths"], QUERY)
    with torch.no_grad():
        # the model's phrase-image score, averaged over the query's phrases
        phrase_scores = out["model"].phrase_image_similarity(out["phrases"], out["regions"], out["region_mask"])
    phrase_scores = phrase_scores[0].mean(dim=0).numpy()
    sentence_scores = (out["images"] @ out["sentence"][0]).numpy()
    model, processor = load_retrieval_model(tiny["model"])
    for rank_by, expected_scores in (("phrases", phrase_scores), ("both", sentence_scores + 0.5 * phrase_scores)):
        result = script.main(["search", "--model", str(tiny["model"]), "--index", str(indexed), "--query", QUERY,
                              "--top-k", "7", "--rank-by", rank_by])
        expected = np.argsort(-expected_scores, kind="stable")[:7]
        assert [hit.row for hit in result["hits"]] == expected.tolist()
        np.testing.assert_allclose([hit.score for hit in result["hits"]], expected_scores[expected], atol=1e-5)
    from processing.retrieval_index import RetrievalIndex, search_index

    index = RetrievalIndex.load(indexed)
    with pytest.raises(ValueError, match="rank_by must be one of"):
        search_index(index, model, processor, QUERY, rank_by="regions")
    flat_model, flat_processor = load_retrieval_model(tiny["flat"])
    flat_index = RetrievalIndex(**{**index.__dict__, "hierarchical": False})
    with pytest.raises(ValueError, match="needs phrase embeddings"):
        search_index(flat_index, flat_model, flat_processor, QUERY, rank_by="phrases")
