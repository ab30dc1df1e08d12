import json

import pytest
from transformers import AutoTokenizer

from modeling_glied import GLIEDConfig
from processing.tokenization_glied import (
    GLIEDTokenizer,
    build_vocabulary,
    count_words,
    register_tokenizer,
    split_caption,
)

CAPTIONS = (
    ["A dog runs on the grass."] * 7
    + ["A cat sits on the sofa."] * 6
    + ["The man's hat is red!"] * 2
    + ["Zebras graze."]
)


def test_special_tokens_agree_with_the_config():
    tokenizer = GLIEDTokenizer()
    config = GLIEDConfig()
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (
        config.pad_token_id, config.bos_token_id, config.eos_token_id, config.unk_token_id)
    assert len(tokenizer) == 4


@pytest.mark.parametrize(
    "text, words",
    [
        ("A Dog, RUNNING fast!!", ["a", "dog", "running", "fast"]),
        ("The man's hat", ["the", "man's", "hat"]),
        ("the man\u2019s hat", ["the", "man's", "hat"]),
        ("'quoted' dogs' toys", ["quoted", "dogs", "toys"]),
        ("rock-n-roll 2 kids;at the\tpark", ["rock", "n", "roll", "2", "kids", "at", "the", "park"]),
        ("snake_case & co.", ["snake", "case", "co"]),
        ("  ...  ", []),
        ("Caf\u00e9 cafe\u0301", ["caf\u00e9", "caf\u00e9"]),
    ],
)
def test_normalisation(text, words):
    assert split_caption(text) == words


def test_tokenizer_normaliser_is_the_same_rule():
    tokenizer = GLIEDTokenizer.from_captions(CAPTIONS, count_threshold=0)
    text = "A DOG's hat, on the sofa!"
    words = split_caption(text)
    assert tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"]) == [
        word if word in tokenizer.get_vocab() else "<unk>" for word in words
    ]


def test_threshold_keeps_words_seen_more_than_threshold_times():
    counts = count_words(CAPTIONS)
    assert counts["on"] == 13 and counts["dog"] == 7 and counts["cat"] == 6 and counts["hat"] == 2
    vocab = build_vocabulary(CAPTIONS, count_threshold=6)
    assert "dog" in vocab  # 7 > 6
    assert "cat" not in vocab  # 6 is not more than 6
    vocab = build_vocabulary(CAPTIONS, count_threshold=5)
    assert "cat" in vocab and "hat" not in vocab
    vocab = build_vocabulary(CAPTIONS, count_threshold=0)
    assert "zebras" in vocab  # seen once


def test_vocabulary_order_is_count_then_alphabetical_and_deterministic():
    vocab = build_vocabulary(CAPTIONS, count_threshold=0)
    words = sorted(vocab, key=vocab.get)
    assert words[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    # the 15, then a and on 13 (alphabetical), dog 7; ... hat, is, man's, red 2; graze, zebras 1
    assert words[4:8] == ["the", "a", "on", "dog"]
    assert words[-6:] == ["hat", "is", "man's", "red", "graze", "zebras"]
    assert list(vocab.values()) == list(range(len(vocab)))
    assert build_vocabulary(list(reversed(CAPTIONS)), count_threshold=0) == vocab


def test_nested_captions_and_extra_words():
    per_image = [CAPTIONS[:7], CAPTIONS[7:]]
    assert build_vocabulary(per_image, count_threshold=1) == build_vocabulary(CAPTIONS, count_threshold=1)
    vocab = build_vocabulary(CAPTIONS, count_threshold=5, extra_words=["Frisbee", "dog", "hat"])
    assert vocab["frisbee"] == len(vocab) - 2 and vocab["hat"] == len(vocab) - 1
    assert vocab["dog"] < vocab["frisbee"]


def test_bad_threshold_and_captions():
    with pytest.raises(ValueError, match="count_threshold"):
        build_vocabulary(CAPTIONS, count_threshold=-1)
    with pytest.raises(ValueError, match="strings"):
        build_vocabulary([1, 2], count_threshold=0)


def test_bad_vocabulary():
    with pytest.raises(ValueError, match="'<unk>' must have id 3"):
        GLIEDTokenizer(vocab={"<pad>": 0, "<bos>": 1, "<eos>": 2, "dog": 3, "<unk>": 4})
    with pytest.raises(ValueError, match="consecutive"):
        GLIEDTokenizer(vocab={"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, "dog": 5})


def test_unknown_words_map_to_unk_and_are_counted():
    tokenizer = GLIEDTokenizer.from_captions(CAPTIONS, count_threshold=5)
    ids = tokenizer("a giraffe on the hat, a giraffe")["input_ids"]
    unk = tokenizer.unk_token_id
    assert ids == [tokenizer.convert_tokens_to_ids("a"), unk, tokenizer.convert_tokens_to_ids("on"),
                   tokenizer.convert_tokens_to_ids("the"), unk, tokenizer.convert_tokens_to_ids("a"), unk]
    assert tokenizer.unknown_words(["a giraffe on the hat", "a giraffe"]) == {"giraffe": 2, "hat": 1}
    assert tokenizer.unknown_words("a dog") == {}


def test_special_token_text_in_a_caption_is_not_a_control_token():
    tokenizer = GLIEDTokenizer.from_captions(CAPTIONS, count_threshold=5)
    ids = tokenizer("a <eos> dog")["input_ids"]
    assert tokenizer.eos_token_id not in ids and ids[1] == tokenizer.unk_token_id


def test_encode_decode_round_trip():
    tokenizer = GLIEDTokenizer.from_captions(CAPTIONS, count_threshold=0)
    ids = tokenizer("A cat sits on the sofa.")["input_ids"]
    assert tokenizer.bos_token_id not in ids and tokenizer.eos_token_id not in ids  # no special tokens added
    assert tokenizer.decode(ids) == "a cat sits on the sofa"
    with_specials = [tokenizer.bos_token_id] + ids + [tokenizer.eos_token_id, tokenizer.pad_token_id]
    assert tokenizer.decode(with_specials, skip_special_tokens=True) == "a cat sits on the sofa"
    assert tokenizer.decode(with_specials) == "<bos> a cat sits on the sofa <eos> <pad>"
    assert tokenizer.decode(tokenizer("the man's hat")["input_ids"]) == "the man's hat"


def test_padding_batch():
    tokenizer = GLIEDTokenizer.from_captions(CAPTIONS, count_threshold=0)
    batch = tokenizer(["a dog", "a cat sits on the sofa"], padding=True)
    assert batch["input_ids"][0][2:] == [0, 0, 0, 0]
    assert batch["attention_mask"][0] == [1, 1, 0, 0, 0, 0]


def test_save_load_round_trip(tmp_path):
    tokenizer = GLIEDTokenizer.from_captions(CAPTIONS, count_threshold=0)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "GLIEDTokenizer"
    loaded = GLIEDTokenizer.from_pretrained(tmp_path)
    assert type(loaded) is GLIEDTokenizer
    assert loaded.get_vocab() == tokenizer.get_vocab()
    text = "The man's cat, on a red SOFA <eos>"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.unk_token_id == 3 and loaded.eos_token_id == 2


def test_auto_tokenizer_round_trip(tmp_path):
    register_tokenizer()
    register_tokenizer()  # twice is harmless
    tokenizer = GLIEDTokenizer.from_captions(CAPTIONS, count_threshold=0)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded) is GLIEDTokenizer
    assert loaded("zebras graze")["input_ids"] == tokenizer("zebras graze")["input_ids"]
    GLIEDConfig(vocab_size=len(tokenizer)).save_pretrained(tmp_path)  # next to a model config too
    assert type(AutoTokenizer.from_pretrained(tmp_path)) is GLIEDTokenizer
