"""CiderD (vectorised CIDEr-D) against pycocoevalcap's Cider, cached document frequencies, save/load."""
import ast
import json
import math
import random
import struct

import numpy as np
import pytest

from modeling_glied.cider import CiderD

pytest.importorskip("pycocoevalcap")
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from pycocoevalcap.cider.cider_scorer import CiderScorer  # noqa: E402

from processing.metrics import pycocoevalcap_cider  # noqa: E402

TOL = 1e-6


def caption(rng, vocab, lo, hi):
    return " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))


def random_batch(seed, images, vocab_size=8, max_refs=5, lo=0, hi=9):
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(vocab_size)]
    gts = {
        f"img{seed}_{i}": [caption(rng, vocab, 1, hi) for _ in range(rng.randint(1, max_refs))] for i in range(images)
    }
    res = {k: [caption(rng, vocab, lo, hi)] for k in gts}
    return gts, res


def assert_same(ours, theirs):
    assert abs(float(ours[0]) - float(theirs[0])) < TOL
    assert isinstance(ours[1], np.ndarray) and ours[1].shape == (len(theirs[1]),)
    np.testing.assert_allclose(ours[1], np.asarray(theirs[1]), rtol=0, atol=TOL)


def pycoco_document_frequency(ref_lists):
    scorer = CiderScorer()
    for refs in ref_lists:
        scorer += (None, refs)
    scorer.compute_doc_freq()
    return dict(scorer.document_frequency)


@pytest.mark.parametrize(
    "seed,images,vocab_size,max_refs,lo,hi",
    [
        (0, 20, 8, 5, 0, 9),  # small vocabulary: many shared and repeated n-grams
        (1, 7, 3, 3, 0, 12),  # three words: long runs of repeated words
        (2, 40, 50, 6, 1, 15),  # larger vocabulary, multi-reference
        (3, 12, 6, 2, 0, 2),  # empty-ish captions: 0-2 words, no 3- or 4-grams at all
        (4, 1, 5, 5, 0, 8),  # a single image: log(1) = 0 idf, every score 0
        (5, 2, 4, 1, 1, 4),  # two images, one reference each
    ],
)
def test_matches_pycocoevalcap(seed, images, vocab_size, max_refs, lo, hi):
    gts, res = random_batch(seed, images, vocab_size, max_refs, lo, hi)
    theirs = Cider().compute_score(gts, res)
    ours = CiderD().compute_score(gts, res)
    assert_same(ours, theirs)
    if images > 2:
        assert ours[0] > 0  # the comparison is not between two arrays of zeros


def test_matches_pycocoevalcap_on_edge_captions():
    gts = {
        3: ["a dog runs", "a dog is running on the grass", "dog"],
        1: ["a a a a a", "a cat"],
        2: ["a b", "a c"],
        7: ["the the the the the the the the"],
        5: ["x"],
    }
    res = {3: ["a dog runs on the grass grass"], 1: ["a a a"], 2: ["a"], 7: [""], 5: ["x x x x x x x x x x x x"]}
    ours, theirs = CiderD().compute_score(gts, res), Cider().compute_score(gts, res)
    assert_same(ours, theirs)
    assert ours[1][0] > 0 and ours[1][3] == 0.0  # keys in gts order: image 3 first, the empty caption 4th


def test_duplicated_entries_count_as_documents():
    """A flattened SCST batch (one entry per sample, references repeated) keeps pycocoevalcap's df."""
    gts, _ = random_batch(6, 10, vocab_size=10)
    rng = random.Random(6)
    vocab = [f"w{i}" for i in range(10)]
    flat_gts = {(k, s): refs for k, refs in gts.items() for s in range(4)}
    flat_res = {key: [caption(rng, vocab, 0, 9)] for key in flat_gts}
    assert_same(CiderD().compute_score(flat_gts, flat_res), Cider().compute_score(flat_gts, flat_res))


def test_cached_df_equals_explicit_pycocoevalcap_computation():
    train, _ = random_batch(10, 60, vocab_size=9)
    gts, res = random_batch(11, 15, vocab_size=12)  # words w9-w11 never occur in training
    cached = CiderD.from_references(train)
    assert cached.has_document_frequency and cached.num_documents == 60
    assert cached.ref_len == pytest.approx(math.log(60))
    df = cached.document_frequency()
    assert df == pycoco_document_frequency(train.values())
    ours = cached.compute_score(gts, res)
    theirs = pycocoevalcap_cider(gts, res, df, cached.ref_len)
    assert_same(ours, theirs)
    # the cache is really used: scores differ from the batch-df ones
    assert not np.allclose(ours[1], CiderD().compute_score(gts, res)[1])


def test_from_references_of_the_batch_equals_pycocoevalcap():
    gts, res = random_batch(12, 25, vocab_size=7)
    assert_same(CiderD.from_references(gts).compute_score(gts, res), Cider().compute_score(gts, res))


def test_document_frequency_mapping_constructor():
    train, _ = random_batch(13, 30)
    gts, res = random_batch(14, 10)
    df = pycoco_document_frequency(train.values())
    from_mapping = CiderD(document_frequency=df, ref_len=math.log(30))
    # space-joined string keys work too
    from_strings = CiderD(document_frequency={" ".join(k): v for k, v in df.items()}, ref_len=math.log(30))
    expected = CiderD.from_references(train).compute_score(gts, res)
    assert_same(from_mapping.compute_score(gts, res), expected)
    assert_same(from_strings.compute_score(gts, res), expected)
    assert from_mapping.document_frequency() == df


def test_negative_idf_weights_follow_pycocoevalcap():
    """A ref_len below log(df) gives negative weights; pycocoevalcap's clipping then differs from w^2 min(tf)."""
    train, _ = random_batch(15, 20, vocab_size=5)
    gts, res = random_batch(16, 8, vocab_size=5)
    df = pycoco_document_frequency(train.values())
    ours = CiderD(document_frequency=df, ref_len=1.0).compute_score(gts, res)
    assert_same(ours, pycocoevalcap_cider(gts, res, df, 1.0))


def test_reward_many_candidates_per_image():
    train, _ = random_batch(20, 80, vocab_size=10)
    refs_by_id, _ = random_batch(21, 6, vocab_size=10)
    refs = list(refs_by_id.values())
    rng = random.Random(22)
    vocab = [f"w{i}" for i in range(11)]
    candidates = [caption(rng, vocab, 0, 10) for _ in range(6 * 6)]  # 5 samples + greedy per image
    cached = CiderD.from_references(train)
    rewards = cached.reward(candidates, refs)
    assert rewards.shape == (36,) and rewards.dtype == np.float64
    flat_gts = {i: refs[i // 6] for i in range(36)}
    flat_res = {i: [c] for i, c in enumerate(candidates)}
    expected = pycocoevalcap_cider(flat_gts, flat_res, cached.document_frequency(), cached.ref_len)[1]
    np.testing.assert_allclose(rewards, expected, rtol=0, atol=TOL)
    np.testing.assert_allclose(cached(candidates, refs), rewards, rtol=0, atol=0)
    # explicit, shuffled image_index gives the same scores
    perm = np.random.default_rng(0).permutation(36)
    shuffled = cached.reward([candidates[i] for i in perm], refs, image_index=perm // 6)
    np.testing.assert_allclose(shuffled, rewards[perm], rtol=0, atol=1e-12)


def test_reward_without_cache_counts_each_image_once():
    refs_by_id, _ = random_batch(23, 8, vocab_size=6)
    refs = list(refs_by_id.values())
    rng = random.Random(24)
    candidates = [caption(rng, [f"w{i}" for i in range(6)], 1, 8) for _ in range(8 * 3)]
    rewards = CiderD().reward(candidates, refs)
    df = pycoco_document_frequency(refs)
    flat_gts = {i: refs[i // 3] for i in range(24)}
    flat_res = {i: [c] for i, c in enumerate(candidates)}
    expected = pycocoevalcap_cider(flat_gts, flat_res, df, math.log(8))[1]
    np.testing.assert_allclose(rewards, expected, rtol=0, atol=TOL)
    # one candidate per image is exactly pycocoevalcap's compute_score
    one = candidates[::3]
    theirs = Cider().compute_score(dict(enumerate(refs)), {i: [c] for i, c in enumerate(one)})[1]
    np.testing.assert_allclose(CiderD().reward(one, refs), theirs, rtol=0, atol=TOL)


def test_save_load_round_trip(tmp_path):
    train, _ = random_batch(30, 40, vocab_size=11)
    gts, res = random_batch(31, 10, vocab_size=13)
    cached = CiderD.from_references(train)
    path = cached.save(tmp_path / "cider_df.safetensors")
    loaded = CiderD.load(path)
    assert loaded.n == cached.n and loaded.ref_len == cached.ref_len and loaded.num_documents == 40
    assert loaded.document_frequency() == cached.document_frequency()
    assert_same(loaded.compute_score(gts, res), cached.compute_score(gts, res))
    # a plain safetensors file: 8-byte header length, JSON header, raw data; no pickle anywhere
    raw = open(path, "rb").read()
    (head_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + head_len])
    assert header["__metadata__"]["format"] == "glied-cider-d-document-frequency"
    assert {"vocab_utf8", "keys.1", "df.4"} <= set(header)
    st = pytest.importorskip("safetensors.numpy")
    tensors = st.load_file(str(path))
    np.testing.assert_array_equal(tensors["df.2"], cached._df[1])


def test_save_load_json_round_trip(tmp_path):
    train, _ = random_batch(32, 30, vocab_size=9)
    gts, res = random_batch(33, 8, vocab_size=10)
    cached = CiderD.from_references(train)
    path = cached.save(tmp_path / "cider_df.json")
    content = json.load(open(path, encoding="utf-8"))
    assert content["format"] == "glied-cider-d-document-frequency" and content["n"] == 4
    assert content["num_documents"] == 30 and len(content["keys"]) == len(content["df"]) == 4
    loaded = CiderD.load(path)
    assert loaded.document_frequency() == cached.document_frequency() and loaded.ref_len == cached.ref_len
    assert_same(loaded.compute_score(gts, res), cached.compute_score(gts, res))
    content["keys"][1][0] = 1 << 60  # a prefix id beyond the unigram table
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="order 2 is malformed"):
        CiderD.load(corrupt)


def test_load_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CIDEr-D cache file"):
        CiderD.load(tmp_path / "absent.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 4)
    with pytest.raises(ValueError, match="not a safetensors file"):
        CiderD.load(garbage)
    other = tmp_path / "other.safetensors"
    head = json.dumps({"__metadata__": {"format": "something-else"}}).encode()
    other.write_bytes(struct.pack("<Q", len(head)) + head)
    with pytest.raises(ValueError, match="not a CIDEr-D document-frequency file"):
        CiderD.load(other)
    foreign_json = tmp_path / "config.json"
    foreign_json.write_text(json.dumps({"model_type": "glied"}))
    with pytest.raises(ValueError, match="not a CIDEr-D document-frequency file"):
        CiderD.load(foreign_json)


def test_save_without_cache_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no cached document frequencies"):
        CiderD().save(tmp_path / "x.safetensors")


@pytest.mark.parametrize(
    "gts,res,message",
    [
        ({1: ["a b"]}, {2: ["a b"]}, "same image ids"),
        ({1: ["a b"]}, {1: ["a", "b"]}, "exactly one candidate"),
        ({1: ["a b"]}, {1: "a b"}, "exactly one candidate"),
        ({1: []}, {1: ["a"]}, "empty list"),
        ({1: "a b"}, {1: ["a"]}, "list of reference strings"),
        ({1: ["a", 3]}, {1: ["a"]}, "must be a string"),
        ({1: ["a b"]}, {1: [None]}, "must be a string"),
        ({}, {}, "empty"),
    ],
)
def test_compute_score_validation(gts, res, message):
    with pytest.raises(ValueError, match=message):
        CiderD().compute_score(gts, res)


def test_reward_validation():
    scorer = CiderD()
    with pytest.raises(ValueError, match="equal groups"):
        scorer.reward(["a", "b", "c"], [["a"], ["b"]])
    with pytest.raises(ValueError, match="image_index values"):
        scorer.reward(["a", "b"], [["a"], ["b"]], image_index=[0, 2])
    with pytest.raises(ValueError, match="one integer per candidate"):
        scorer.reward(["a", "b"], [["a"], ["b"]], image_index=[0])
    with pytest.raises(ValueError, match="candidate #1 must be a string"):
        scorer.reward(["a", 5], [["a"], ["b"]])
    with pytest.raises(ValueError, match="at least one image"):
        scorer.reward([], [])
    assert scorer.reward([], [["a"]]).shape == (0,)


def test_constructor_validation():
    with pytest.raises(ValueError, match="needs ref_len"):
        CiderD(document_frequency={("a",): 1})
    with pytest.raises(ValueError, match="only meaningful together"):
        CiderD(ref_len=1.0)
    with pytest.raises(ValueError, match="positive integer"):
        CiderD(n=0)
    with pytest.raises(ValueError, match="not an n-gram"):
        CiderD(document_frequency={("a b",): 1}, ref_len=1.0)
    with pytest.raises(ValueError, match="at least one image"):
        CiderD.from_references([])


def test_other_orders_save_and_score(tmp_path):
    """n != 4 (pycocoevalcap ignores n, so no comparison): a perfect candidate beats a wrong one, round trip."""
    train, _ = random_batch(40, 30, vocab_size=8)
    for n in (1, 2, 6):
        cached = CiderD.from_references(train, n=n)
        refs = [["w1 w2 w3 w4", "w1 w2 w3"], ["w5 w6 w7", "w6 w7 w5"]]
        perfect, wrong = cached.reward(["w1 w2 w3 w4", "w5 w6 w7"], refs), cached.reward(["w0 w0", "w4 w4"], refs)
        assert np.all(perfect > wrong)
        loaded = CiderD.load(cached.save(tmp_path / f"df{n}.safetensors"))
        assert loaded.n == n
        np.testing.assert_array_equal(loaded.reward(["w1 w2 w3 w4", "w5 w6 w7"], refs), perfect)


def test_cider_module_imports_only_numpy_torch_and_stdlib():
    import modeling_glied.cider as module

    tree = ast.parse(open(module.__file__, encoding="utf-8").read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "json", "math", "os", "struct", "itertools", "typing", "numpy", "torch"}


def test_unchanged_by_scoring_calls():
    """Scoring never grows the cached vocabulary or tables (unseen words get call-local ids)."""
    train, _ = random_batch(50, 20, vocab_size=5)
    cached = CiderD.from_references(train)
    before = cached.document_frequency()
    vocab_size = len(cached._vocab)
    first = cached.reward(["w9 w8 w1", "w1 w2"], [["w9 w8 w1"], ["w1 w2 w3"]])
    second = cached.reward(["w9 w8 w1", "w1 w2"], [["w9 w8 w1"], ["w1 w2 w3"]])
    np.testing.assert_array_equal(first, second)
    assert len(cached._vocab) == vocab_size and cached.document_frequency() == before
