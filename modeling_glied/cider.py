"""Vectorised CIDEr-D (Vedantam et al. 2015), numerically the COCO caption evaluation's `Cider` scorer.

`pycocoevalcap.cider.Cider` (1.2) is CIDEr-D: tf-idf n-gram vectors (n = 1..4), clipped cosine similarity, a
Gaussian length penalty (sigma 6) and a factor 10. This module computes the same numbers with numpy array
operations instead of one Python dict per sentence, and can keep the document frequencies of a training corpus
(the self-critical reward of Rennie et al. 2017 uses the training references' document frequencies).

Details kept from pycocoevalcap, so that scores agree to rounding error:
- sentences are split on whitespace (`str.split()`); no other normalisation (tokenise before, e.g. with PTB);
- document frequency df(g) = number of *entries* (images) whose references contain g; ref_len = log(#entries);
- the length used by the penalty is the number of bigrams of a sentence, max(#words - 1, 0);
- a norm of 0 leaves the dot product undivided (it is 0 then, unless idf weights are negative).

N-gram identities are exact (no hashing): word ids are packed as `(id of the (k-1)-gram prefix << 32) | word id`
and compacted per order against sorted tables (the cached training n-grams) with `searchsorted`; n-grams unseen in
the tables get call-local ids. The cache is saved in the safetensors format (written with numpy, never pickle).
"""
from __future__ import annotations

import json
import math
import os
import struct
from itertools import chain, repeat
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["CiderD"]

_SHIFT = 32  # bits of the word id inside a packed n-gram key
_MAX_ID = 1 << 31  # compact ids and word ids stay below this, so packed keys fit in int64
_FORMAT = "glied-cider-d-document-frequency"
_FORMAT_VERSION = "1"
_ST_DTYPES = {"F64": np.dtype("<f8"), "I64": np.dtype("<i8"), "U8": np.dtype("u1")}


def _check_sentence(sentence, what: str) -> str:
    if not isinstance(sentence, str):
        raise ValueError(f"{what} must be a string, got {type(sentence).__name__}")
    return sentence


def _check_reference_list(refs, what: str) -> list[str]:
    if isinstance(refs, str) or not isinstance(refs, Sequence):
        raise ValueError(f"{what} must be a non-empty list of reference strings, got {type(refs).__name__}")
    if len(refs) == 0:
        raise ValueError(f"{what} is an empty list: every image needs at least one reference")
    return [_check_sentence(r, f"each reference of {what}") for r in refs]


class CiderD:
    """CIDEr-D scorer, equal to `pycocoevalcap.cider.Cider` (to ~1e-12) and much faster.

    Args:
        n: longest n-gram (pycocoevalcap only works with the default 4: its n-gram extraction ignores `n`).
        sigma: standard deviation of the Gaussian length penalty.
        document_frequency: optional cached document frequencies, a mapping from an n-gram (a tuple of words or a
            space-joined string) to the number of images whose references contain it. When given (or when built
            with `from_references` / `load`), every score uses it instead of the df of the references at hand.
        ref_len: log of the number of images the cached document frequencies were counted over; required with
            `document_frequency`.

    `compute_score(gts, res)` takes and returns what `Cider().compute_score` does; `reward(candidates,
    references)` scores many candidates per image (self-critical training) in one vectorised pass.
    """

    def __init__(
        self,
        n: int = 4,
        sigma: float = 6.0,
        document_frequency: Mapping | None = None,
        ref_len: float | None = None,
    ):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        self.n = n
        self.sigma = float(sigma)
        self._vocab: dict[str, int] = {}
        self._words: list[str] = []
        self._tables: list[np.ndarray] = [np.zeros(0, np.int64) for _ in range(n)]
        self._df: list[np.ndarray] | None = None
        self._ref_len: float | None = None
        self.num_documents: int | None = None
        if document_frequency is None:
            if ref_len is not None:
                raise ValueError("ref_len is only meaningful together with document_frequency")
        else:
            if ref_len is None:
                raise ValueError(
                    "document_frequency needs ref_len, the log of the number of images it was counted over"
                )
            self._set_df_from_mapping(document_frequency, float(ref_len))

    # ------------------------------------------------------------------ cache
    @property
    def has_document_frequency(self) -> bool:
        """True when scores use cached (training-set) document frequencies."""
        return self._df is not None

    @property
    def ref_len(self) -> float | None:
        """log(number of images) of the cached document frequencies (None without a cache)."""
        return self._ref_len

    @classmethod
    def from_references(
        cls,
        references: Mapping[object, Sequence[str]] | Iterable[Sequence[str]],
        n: int = 4,
        sigma: float = 6.0,
    ) -> "CiderD":
        """Count document frequencies once over a corpus (e.g. all training references), for SCST rewards.

        `references`: {image_id: [tokenised reference, ...]} or a list of such lists, one entry per image (an
        image listed twice counts twice, as in pycocoevalcap). ref_len = log(number of images).
        """
        ref_lists = list(references.values()) if isinstance(references, Mapping) else list(references)
        if not ref_lists:
            raise ValueError("from_references needs at least one image's references")
        scorer = cls(n=n, sigma=sigma)
        sentences: list[str] = []
        counts = np.empty(len(ref_lists), np.int64)
        for i, refs in enumerate(ref_lists):
            refs = _check_reference_list(refs, f"references of image #{i}")
            sentences.extend(refs)
            counts[i] = len(refs)
        group = np.repeat(np.arange(len(ref_lists), dtype=np.int64), counts)
        words: dict[str, int] = {}
        word_ids, lengths = _encode(sentences, words, grow=True)
        scorer._vocab = words
        scorer._words = list(words)
        tables, dfs = [], []
        for k, (idx, compact, size, new_keys) in enumerate(scorer._ngrams(word_ids, lengths)):
            tables.append(new_keys)  # empty tables before: every key is new and its id its sorted position
            pairs = np.unique(group[_sentence_of(idx, lengths)] * max(size, 1) + compact)
            dfs.append(np.bincount(pairs % max(size, 1), minlength=size).astype(np.float64))
        scorer._tables = tables
        scorer._df = dfs
        scorer.num_documents = len(ref_lists)
        scorer._ref_len = float(np.log(float(len(ref_lists))))
        return scorer

    def _set_df_from_mapping(self, document_frequency: Mapping, ref_len: float) -> None:
        by_order: list[dict[tuple, float]] = [{} for _ in range(self.n)]
        for gram, count in document_frequency.items():
            words = tuple(gram.split()) if isinstance(gram, str) else tuple(gram)
            if not words or not all(isinstance(w, str) and w.split() == [w] for w in words):
                raise ValueError(f"document_frequency key {gram!r} is not an n-gram of words")
            if len(words) > self.n:
                continue  # longer than the scorer's n-grams: never looked up
            count = float(count)
            if not count >= 0:
                raise ValueError(f"document frequency of {gram!r} must be >= 0, got {count}")
            by_order[len(words) - 1][words] = count
        for k in range(self.n - 1, 0, -1):  # every prefix needs an id: absent prefixes get df 0 (= unseen)
            for gram in by_order[k]:
                by_order[k - 1].setdefault(gram[:-1], 0.0)
        words = sorted({w for order in by_order for gram in order for w in gram})
        self._words = words
        self._vocab = {w: i for i, w in enumerate(words)}
        ids_prev: dict[tuple, int] = {}
        tables, dfs = [], []
        for k, grams in enumerate(by_order):
            grams = list(grams.items())
            if k == 0:
                keys = [self._vocab[g[0]] for g, _ in grams]
            else:
                keys = [(ids_prev[g[:-1]] << _SHIFT) | self._vocab[g[-1]] for g, _ in grams]
            keys = np.asarray(keys, np.int64)
            order = np.argsort(keys, kind="stable")
            tables.append(keys[order])
            dfs.append(np.asarray([c for _, c in grams], np.float64)[order])
            ids_prev = {grams[j][0]: pos for pos, j in enumerate(order.tolist())}
        self._tables, self._df = tables, dfs
        self._ref_len = ref_len

    def document_frequency(self) -> dict[tuple[str, ...], float]:
        """The cached document frequencies as {n-gram tuple: df} (slow; for inspection and interchange)."""
        if self._df is None:
            return {}
        out: dict[tuple[str, ...], float] = {}
        prev: list[tuple[str, ...]] = []
        for k, (table, df) in enumerate(zip(self._tables, self._df)):
            words = (table & ((1 << _SHIFT) - 1)).tolist()
            if k == 0:
                grams = [(self._words[w],) for w in words]
            else:
                grams = [prev[p] + (self._words[w],) for p, w in zip((table >> _SHIFT).tolist(), words)]
            out.update((g, c) for g, c in zip(grams, df.tolist()) if c > 0)
            prev = grams
        return out

    def save(self, path: str | os.PathLike) -> str:
        """Write the cached document frequencies to a safetensors file (no pickle); returns the path."""
        if self._df is None:
            raise ValueError("this CiderD has no cached document frequencies to save (use from_references)")
        tensors = {"vocab_utf8": np.frombuffer("\n".join(self._words).encode("utf-8"), np.uint8)}
        for k in range(self.n):
            tensors[f"keys.{k + 1}"] = self._tables[k]
            tensors[f"df.{k + 1}"] = self._df[k]
        metadata = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "n": str(self.n),
            "ref_len": repr(self._ref_len),
            "num_documents": "" if self.num_documents is None else str(self.num_documents),
        }
        _write_safetensors(os.fspath(path), tensors, metadata)
        return os.fspath(path)

    @classmethod
    def load(cls, path: str | os.PathLike, sigma: float = 6.0) -> "CiderD":
        """Read document frequencies written by `save`."""
        tensors, metadata = _read_safetensors(os.fspath(path))
        if metadata.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a CIDEr-D document-frequency file (format {metadata.get('format')!r})")
        if metadata.get("version") != _FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported CIDEr-D cache version {metadata.get('version')!r}")
        try:
            n = int(metadata["n"])
            ref_len = float(metadata["ref_len"])
        except (KeyError, ValueError) as err:
            raise ValueError(f"{path}: bad CIDEr-D cache metadata ({err})") from None
        scorer = cls(n=n, sigma=sigma)
        expected = {"vocab_utf8"} | {f"{p}.{k}" for p in ("keys", "df") for k in range(1, n + 1)}
        if set(tensors) != expected:
            raise ValueError(f"{path}: expected tensors {sorted(expected)}, found {sorted(tensors)}")
        text = tensors["vocab_utf8"].tobytes().decode("utf-8")
        scorer._words = text.split("\n") if text else []
        scorer._vocab = {w: i for i, w in enumerate(scorer._words)}
        scorer._tables = [tensors[f"keys.{k}"].astype(np.int64) for k in range(1, n + 1)]
        scorer._df = [tensors[f"df.{k}"].astype(np.float64) for k in range(1, n + 1)]
        for k, (t, d) in enumerate(zip(scorer._tables, scorer._df)):
            if t.ndim != 1 or t.shape != d.shape or (t.size > 1 and not np.all(t[1:] > t[:-1])):
                raise ValueError(f"{path}: table of order {k + 1} is malformed")
        scorer._ref_len = ref_len
        scorer.num_documents = int(metadata["num_documents"]) if metadata.get("num_documents") else None
        return scorer

    # ------------------------------------------------------------------ scoring
    def compute_score(self, gts: Mapping, res: Mapping) -> tuple[np.float64, np.ndarray]:
        """Same arguments and results as `pycocoevalcap.cider.Cider().compute_score(gts, res)`.

        gts: {image_id: [tokenised reference, ...]}; res: {image_id: [tokenised candidate]} with the same keys.
        Returns (mean score, per-image scores in the order of `gts`). Without cached document frequencies the
        df and ref_len come from `gts` (pycocoevalcap); with them, from the cache.
        """
        if not isinstance(gts, Mapping) or not isinstance(res, Mapping):
            raise ValueError("gts and res must be dicts {image_id: list of strings}")
        if gts.keys() != res.keys():
            missing = [k for k in res if k not in gts][:5]
            extra = [k for k in gts if k not in res][:5]
            raise ValueError(f"gts and res must have the same image ids (only in res: {missing}, only in gts: {extra})")
        if not gts:
            raise ValueError("gts and res are empty: nothing to score")
        ref_lists, candidates = [], []
        for key, refs in gts.items():
            hypo = res[key]
            if isinstance(hypo, str) or not isinstance(hypo, Sequence) or len(hypo) != 1:
                raise ValueError(f"res[{key!r}] must be a list holding exactly one candidate string")
            candidates.append(_check_sentence(hypo[0], f"res[{key!r}][0]"))
            ref_lists.append(_check_reference_list(refs, f"gts[{key!r}]"))
        scores = self._score(candidates, np.arange(len(candidates), dtype=np.int64), ref_lists)
        return np.mean(scores), scores

    def reward(
        self,
        candidates: Sequence[str],
        references: Sequence[Sequence[str]],
        image_index: Sequence[int] | np.ndarray | None = None,
    ) -> np.ndarray:
        """CIDEr-D of many candidates against their image's references, e.g. for self-critical training.

        candidates: tokenised sentences (several per image: samples and the greedy baseline).
        references: one list of tokenised references per image; each image's n-gram vectors are built once.
        image_index: the image (index into `references`) of every candidate; by default candidates come in
            contiguous groups of len(candidates) / len(references) per image (one per image when equal).
        Returns a float64 array, one score per candidate. Document frequencies are the cached ones, or without a
        cache counted over `references` (one document per image, ref_len = log(len(references))).
        """
        candidates = [_check_sentence(c, f"candidate #{i}") for i, c in enumerate(candidates)]
        ref_lists = [_check_reference_list(r, f"references of image #{i}") for i, r in enumerate(references)]
        if not ref_lists:
            raise ValueError("reward needs the references of at least one image")
        if image_index is None:
            if len(candidates) % len(ref_lists):
                raise ValueError(
                    f"{len(candidates)} candidates do not split into equal groups for {len(ref_lists)} images; "
                    "pass image_index"
                )
            per_image = len(candidates) // len(ref_lists)
            image_index = np.repeat(np.arange(len(ref_lists), dtype=np.int64), per_image)
        else:
            image_index = np.asarray(image_index)
            if image_index.shape != (len(candidates),) or (image_index.size and image_index.dtype.kind not in "iu"):
                raise ValueError(f"image_index must hold one integer per candidate ({len(candidates)})")
            image_index = image_index.astype(np.int64)
            if image_index.size and (image_index.min() < 0 or image_index.max() >= len(ref_lists)):
                raise ValueError(f"image_index values must lie in [0, {len(ref_lists)})")
        if not candidates:
            return np.zeros(0, np.float64)
        return self._score(candidates, image_index, ref_lists)

    def __call__(self, candidates, references, image_index=None) -> np.ndarray:
        return self.reward(candidates, references, image_index)

    def __repr__(self) -> str:
        cache = (
            f"cached df over {self.num_documents if self.num_documents is not None else '?'} images, "
            f"{sum(t.size for t in self._tables)} n-grams"
            if self._df is not None
            else "df from the references scored"
        )
        return f"CiderD(n={self.n}, sigma={self.sigma}, {cache})"

    # ------------------------------------------------------------------ internals
    def _ngrams(self, word_ids: np.ndarray, lengths: np.ndarray):
        """Yield, per order k = 1..n: (positions where a k-gram starts, its compact id, id-space size, new keys)."""
        total = word_ids.size
        ends = np.repeat(np.cumsum(lengths), lengths)
        positions = np.arange(total, dtype=np.int64)
        prefix = np.empty(total, np.int64)
        for k in range(1, self.n + 1):
            idx = np.flatnonzero(positions + k <= ends)
            keys = word_ids[idx] if k == 1 else (prefix[idx] << _SHIFT) | word_ids[idx + (k - 1)]
            compact, size, new_keys = _lookup(self._tables[k - 1], keys)
            prefix[idx] = compact  # the next order only reads positions where this order has a k-gram
            yield idx, compact, size, new_keys

    def _score(self, candidates: list[str], image_index: np.ndarray, ref_lists: list[list[str]]) -> np.ndarray:
        n_refs = np.fromiter(map(len, ref_lists), np.int64, count=len(ref_lists))
        R, C = int(n_refs.sum()), len(candidates)
        sentences = list(chain.from_iterable(ref_lists))
        sentences.extend(candidates)
        group = np.concatenate([np.repeat(np.arange(len(ref_lists), dtype=np.int64), n_refs), image_index])
        word_ids, lengths = _encode(sentences, self._vocab)
        S = R + C
        cached = self._df is not None
        ref_len = self._ref_len if cached else float(np.log(float(len(ref_lists))))

        per_order = []
        norm2 = np.zeros((self.n, S))
        for k, (idx, compact, size, _) in enumerate(self._ngrams(word_ids, lengths)):
            size = max(size, 1)
            # term frequencies: one entry per (sentence, n-gram)
            uniq, tf = np.unique(_sentence_of(idx, lengths) * size + compact, return_counts=True)
            sent, gram = np.divmod(uniq, size)
            if cached:
                table_df = self._df[k]
                known = gram < table_df.size
                df = np.zeros(gram.size)
                df[known] = table_df[gram[known]]
            else:  # df(g) = number of images whose references contain g
                is_ref = sent < R
                pairs = np.unique(group[sent[is_ref]] * size + gram[is_ref])
                df = np.bincount(pairs % size, minlength=size).astype(np.float64)[gram]
            # tf-idf: g_k(s) = tf(s) * (log N - log max(1, df))
            vec = tf * (ref_len - np.log(np.maximum(1.0, df)))
            norm2[k] = np.bincount(sent, weights=vec * vec, minlength=S)
            per_order.append((sent, gram, vec, size))
        norm = np.sqrt(norm2)
        bigrams = np.maximum(lengths - 1, 0).astype(np.float64)  # pycocoevalcap's "length" counts bigrams

        scores = np.zeros(C)
        for k, (sent, gram, vec, size) in enumerate(per_order):
            is_ref = sent < R
            r_sent, r_vec = sent[is_ref], vec[is_ref]
            r_key = group[r_sent] * size + gram[is_ref]
            order = np.argsort(r_key, kind="stable")
            r_key = r_key[order]
            c_sent, c_vec = sent[~is_ref], vec[~is_ref]
            c_key = group[c_sent] * size + gram[~is_ref]
            lo = np.searchsorted(r_key, c_key, "left")
            count = np.searchsorted(r_key, c_key, "right") - lo
            matched = int(count.sum())
            if matched == 0:
                continue
            c_i = np.repeat(np.arange(c_key.size), count)
            r_i = order[np.repeat(lo - (np.cumsum(count) - count), count) + np.arange(matched)]
            cs, rs, vc, vr = c_sent[c_i], r_sent[r_i], c_vec[c_i], r_vec[r_i]
            # clipped cosine: sum_g min(g(c), g(r)) g(r) / (|g(c)| |g(r)|), a zero norm leaves it undivided
            denom = norm[k, cs] * norm[k, rs]
            denom[denom == 0] = 1.0
            # Gaussian length penalty exp(-(l(c) - l(r))^2 / (2 sigma^2))
            delta = bigrams[cs] - bigrams[rs]
            contrib = np.minimum(vc, vr) * vr / denom * np.exp(-(delta * delta) / (2.0 * self.sigma**2))
            scores += np.bincount(cs - R, weights=contrib, minlength=C)
        # CIDEr-D = 10 / (n |refs|) sum_k sum_r sim_k(c, r)
        return scores * (10.0 / self.n) / n_refs[image_index]


def _encode(sentences: list[str], vocab: dict[str, int], grow: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Whitespace-split sentences into one flat int64 array of word ids plus per-sentence lengths.

    grow=True adds unseen words to `vocab`; otherwise they get call-local ids len(vocab), len(vocab) + 1, ...
    """
    splits = [s.split() for s in sentences]
    lengths = np.fromiter(map(len, splits), np.int64, count=len(splits))
    flat = list(chain.from_iterable(splits))
    if grow or not vocab:
        target = vocab if grow else {}
        setdefault = target.setdefault
        word_ids = np.fromiter((setdefault(w, len(target)) for w in flat), np.int64, count=len(flat))
    else:
        word_ids = np.fromiter(map(vocab.get, flat, repeat(-1)), np.int64, count=len(flat))
        missing = np.flatnonzero(word_ids < 0)
        if missing.size:
            local: dict[str, int] = {}
            base, setdefault = len(vocab), local.setdefault
            word_ids[missing] = [base + setdefault(flat[i], len(local)) for i in missing.tolist()]
    if word_ids.size and word_ids.max() >= _MAX_ID:
        raise ValueError("more than 2**31 distinct words")
    return word_ids, lengths


def _sentence_of(idx: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Sentence index of each flat word position in idx."""
    return np.searchsorted(np.cumsum(lengths), idx, side="right")


def _lookup(table: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """Compact ids of packed n-gram keys: the position in the sorted table, else table size + rank among the
    call's unseen keys. Returns (ids, size of the id space, sorted unseen keys)."""
    size = table.size
    if size:
        pos = np.searchsorted(table, keys)
        hit = pos < size
        hit[hit] = table[pos[hit]] == keys[hit]
        if hit.all():
            return pos, size, keys[:0]
        new_keys, inverse = np.unique(keys[~hit], return_inverse=True)
        pos[~hit] = size + inverse
    else:
        new_keys, pos = np.unique(keys, return_inverse=True)
        pos = pos.astype(np.int64, copy=False)
    total = size + new_keys.size
    if total >= _MAX_ID:
        raise ValueError("more than 2**31 distinct n-grams of one order")
    return pos, total, new_keys


# ---------------------------------------------------------------------- safetensors without the dependency
def _write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write arrays in the safetensors layout: u64 header length, JSON header, raw little-endian data."""
    names = {np.dtype("<f8"): "F64", np.dtype("<i8"): "I64", np.dtype("u1"): "U8"}
    header: dict[str, object] = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        if array.dtype not in names:
            raise ValueError(f"cannot store dtype {array.dtype} of {name}")
        data = array.tobytes()
        header[name] = {"dtype": names[array.dtype], "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for data in blobs:
            f.write(data)
    os.replace(tmp, path)


def _read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no CIDEr-D cache file at {path}")
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path} is not a safetensors file (too short)")
    (head_len,) = struct.unpack("<Q", raw[:8])
    if 8 + head_len > len(raw):
        raise ValueError(f"{path} is not a safetensors file (bad header length)")
    try:
        header = json.loads(raw[8 : 8 + head_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a safetensors file ({err})") from None
    metadata = header.pop("__metadata__", {}) or {}
    body = memoryview(raw)[8 + head_len :]
    tensors = {}
    for name, spec in header.items():
        try:
            dtype = _ST_DTYPES[spec["dtype"]]
            shape = tuple(int(s) for s in spec["shape"])
            begin, end = (int(o) for o in spec["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: unsupported or malformed tensor entry {name!r}") from None
        if not 0 <= begin <= end <= len(body) or end - begin != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"{path}: tensor {name!r} has inconsistent offsets")
        tensors[name] = np.frombuffer(body[begin:end], dtype=dtype).reshape(shape).copy()
    return tensors, metadata
