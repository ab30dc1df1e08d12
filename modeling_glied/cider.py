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
the tables get call-local ids. The cache is saved as safetensors (written with numpy) or JSON, never pickle.

Typical self-critical use:
    cider = CiderD.from_references(train_refs)          # {image_id: [tokenised reference, ...]}, once
    cider.save("cider_df.safetensors"); cider = CiderD.load("cider_df.safetensors")
    rewards = cider.reward(samples, batch_refs)         # samples: B * k strings, k per image, contiguous
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


def _check_sentences(sentences, what: str) -> list[str]:
    """The sentences as a list, or a ValueError naming the first that is not a string."""
    sentences = list(sentences)
    if not set(map(type, sentences)) <= {str}:
        for i, s in enumerate(sentences):
            if not isinstance(s, str):
                raise ValueError(f"{what} #{i} must be a string, got {type(s).__name__}")
    return sentences


def _check_reference_lists(ref_lists, what: str, names: Sequence | None = None) -> list[list[str]]:
    """Each entry a non-empty list of strings, or a ValueError naming the first bad one (`what` #i or names[i])."""
    ref_lists = list(ref_lists)
    if (
        not set(map(type, ref_lists)) <= {list}
        or not all(ref_lists)
        or not set(map(type, chain.from_iterable(ref_lists))) <= {str}
    ):
        for i, refs in enumerate(ref_lists):
            label = f"{what} #{i}" if names is None else f"{what}[{names[i]!r}]"
            if isinstance(refs, str) or not isinstance(refs, Sequence):
                raise ValueError(f"{label} must be a non-empty list of reference strings, got {type(refs).__name__}")
            if len(refs) == 0:
                raise ValueError(f"{label} is an empty list: every image needs at least one reference")
            _check_sentences(refs, f"{label}: reference")
        ref_lists = [list(refs) for refs in ref_lists]
    return ref_lists


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
        ref_lists = _check_reference_lists(ref_lists, "references of image")
        sentences = list(chain.from_iterable(ref_lists))
        counts = np.fromiter(map(len, ref_lists), np.int64, count=len(ref_lists))
        group = np.repeat(np.arange(len(ref_lists), dtype=np.int64), counts)
        words: dict[str, int] = {}
        word_ids, lengths = _encode(sentences, words, grow=True)
        scorer._vocab = words
        scorer._words = list(words)
        tables, dfs = [], []
        sentence_of = _sentence_of_positions(lengths)
        for k, (idx, compact, size, new_keys) in enumerate(scorer._ngrams(word_ids, lengths)):
            tables.append(new_keys)  # empty tables before: every key is new and its id its sorted position
            pairs = _unique(group[sentence_of[idx]] * max(size, 1) + compact)
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
        """Write the cached document frequencies (no pickle); returns the path.

        A path ending in ".json" gets JSON (portable, larger); any other a safetensors file (compact, fast).
        """
        if self._df is None:
            raise ValueError("this CiderD has no cached document frequencies to save (use from_references)")
        path = os.fspath(path)
        header = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "n": self.n,
            "ref_len": self._ref_len,
            "num_documents": self.num_documents,
        }
        if path.lower().endswith(".json"):
            header["vocab"] = self._words
            header["keys"] = [t.tolist() for t in self._tables]
            header["df"] = [(d.astype(np.int64) if np.all(d == np.round(d)) else d).tolist() for d in self._df]
            _atomic_write(path, json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
            return path
        tensors = {"vocab_utf8": np.frombuffer("\n".join(self._words).encode("utf-8"), np.uint8)}
        for k in range(self.n):
            tensors[f"keys.{k + 1}"] = self._tables[k]
            tensors[f"df.{k + 1}"] = self._df[k]
        metadata = {key: "" if value is None else repr(value) for key, value in header.items()}
        metadata["format"], metadata["version"] = _FORMAT, _FORMAT_VERSION
        _write_safetensors(path, tensors, metadata)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, sigma: float = 6.0) -> "CiderD":
        """Read document frequencies written by `save` (JSON or safetensors, told apart by their content)."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no CIDEr-D cache file at {path}")
        with open(path, "rb") as f:
            raw = f.read()
        if raw.lstrip()[:1] == b"{":
            try:
                header = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ValueError(f"{path} is not a valid JSON file ({err})") from None
            if not isinstance(header, dict):
                raise ValueError(f"{path} is not a CIDEr-D document-frequency file")
            metadata = {key: header.get(key) for key in ("format", "version", "n", "ref_len", "num_documents")}
            try:
                words = list(header["vocab"])
                tables = [np.asarray(t, np.int64).reshape(-1) for t in header["keys"]]
                dfs = [np.asarray(d, np.float64).reshape(-1) for d in header["df"]]
            except (KeyError, TypeError, ValueError) as err:
                if metadata["format"] != _FORMAT:
                    raise ValueError(f"{path} is not a CIDEr-D document-frequency file") from None
                raise ValueError(f"{path}: malformed CIDEr-D cache ({err!r})") from None
        else:
            tensors, metadata = _parse_safetensors(raw, path)
            text = tensors.pop("vocab_utf8", np.zeros(0, np.uint8)).tobytes().decode("utf-8")
            words = text.split("\n") if text else []
            n_tables = sum(name.startswith("keys.") for name in tensors)
            expected = {f"{p}.{k}" for p in ("keys", "df") for k in range(1, n_tables + 1)}
            if metadata.get("format") == _FORMAT and set(tensors) != expected:
                raise ValueError(f"{path}: expected tensors {sorted(expected)}, found {sorted(tensors)}")
            tables = [tensors.get(f"keys.{k}") for k in range(1, n_tables + 1)]
            dfs = [tensors.get(f"df.{k}") for k in range(1, n_tables + 1)]
        if metadata.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a CIDEr-D document-frequency file (format {metadata.get('format')!r})")
        if str(metadata.get("version")) != _FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported CIDEr-D cache version {metadata.get('version')!r}")
        try:
            n = int(metadata["n"])
            ref_len = float(metadata["ref_len"])
            num_documents = int(metadata["num_documents"]) if metadata.get("num_documents") not in (None, "") else None
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: bad CIDEr-D cache metadata ({err!r})") from None
        if len(tables) != n or len(dfs) != n:
            raise ValueError(f"{path}: expected {n} n-gram tables, found {len(tables)}")
        scorer = cls(n=n, sigma=sigma)
        scorer._words = words
        scorer._vocab = {w: i for i, w in enumerate(words)}
        prev_size = 1
        for k, (table, df) in enumerate(zip(tables, dfs)):
            table, df = table.astype(np.int64), df.astype(np.float64)
            if (
                table.ndim != 1
                or table.shape != df.shape
                or (table.size > 1 and not np.all(table[1:] > table[:-1]))
                or (table.size and (table.min() < 0 or (table[-1] >> _SHIFT) >= prev_size))
                or (table.size and np.max(table & ((1 << _SHIFT) - 1)) >= len(words))
            ):
                raise ValueError(f"{path}: the n-gram table of order {k + 1} is malformed")
            tables[k], dfs[k] = table, df
            prev_size = max(table.size, 1)
        scorer._tables, scorer._df = tables, dfs
        scorer._ref_len = ref_len
        scorer.num_documents = num_documents
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
        keys = list(gts)
        hypos = [res[key] for key in keys]
        for key, hypo in zip(keys, hypos):
            if type(hypo) is not list and (isinstance(hypo, str) or not isinstance(hypo, Sequence)) or len(hypo) != 1:
                raise ValueError(f"res[{key!r}] must be a list holding exactly one candidate string")
        candidates = [hypo[0] for hypo in hypos]
        if not set(map(type, candidates)) <= {str}:
            bad = next(k for k, c in zip(keys, candidates) if not isinstance(c, str))
            raise ValueError(f"res[{bad!r}][0] must be a string, got {type(res[bad][0]).__name__}")
        ref_lists = _check_reference_lists([gts[key] for key in keys], "gts", names=keys)
        ref_sets: dict[tuple[str, ...], int] = {}  # entries with identical references share one n-gram pass
        setdefault = ref_sets.setdefault
        image_index = np.fromiter((setdefault(tuple(r), len(ref_sets)) for r in ref_lists), np.int64, len(keys))
        # every entry is a document of the df, so a reference set counts as often as entries use it
        documents = np.bincount(image_index, minlength=len(ref_sets)).astype(np.float64)
        scores = self._score(candidates, image_index, [list(r) for r in ref_sets], documents)
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
        candidates = _check_sentences(candidates, "candidate")
        ref_lists = _check_reference_lists(references, "references of image")
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
        ends = np.cumsum(lengths)[_sentence_of_positions(lengths)]
        positions = np.arange(total, dtype=np.int64)
        prefix = np.empty(total, np.int64)
        for k in range(1, self.n + 1):
            idx = np.flatnonzero(positions + k <= ends)
            keys = word_ids[idx] if k == 1 else (prefix[idx] << _SHIFT) | word_ids[idx + (k - 1)]
            compact, size, new_keys = _lookup(self._tables[k - 1], keys)
            prefix[idx] = compact  # the next order only reads positions where this order has a k-gram
            yield idx, compact, size, new_keys

    def _score(
        self,
        candidates: list[str],
        image_index: np.ndarray,
        ref_lists: list[list[str]],
        documents: np.ndarray | None = None,
    ) -> np.ndarray:
        """CIDEr-D of candidate c against ref_lists[image_index[c]]. Without a cache, df counts reference set i
        as documents[i] documents (default 1 each) and ref_len = log(sum(documents))."""
        n_refs = np.fromiter(map(len, ref_lists), np.int64, count=len(ref_lists))
        R, C = int(n_refs.sum()), len(candidates)
        sentences = list(chain.from_iterable(ref_lists))
        sentences.extend(candidates)
        group = np.concatenate([np.repeat(np.arange(len(ref_lists), dtype=np.int64), n_refs), image_index])
        word_ids, lengths = _encode(sentences, self._vocab)
        S = R + C
        cached = self._df is not None
        if documents is None:
            documents = np.ones(len(ref_lists))
        ref_len = self._ref_len if cached else float(np.log(float(documents.sum())))

        per_order = []
        norm2 = np.zeros((self.n, S))
        sentence_of = _sentence_of_positions(lengths)
        for k, (idx, compact, size, _) in enumerate(self._ngrams(word_ids, lengths)):
            size = max(size, 1)
            # term frequencies: one entry per (sentence, n-gram)
            uniq, tf = _unique(sentence_of[idx] * size + compact, counts=True)
            sent, gram = np.divmod(uniq, size)
            if cached:
                table_df = self._df[k]
                known = gram < table_df.size
                df = np.zeros(gram.size)
                df[known] = table_df[gram[known]]
            else:  # df(g) = number of images whose references contain g
                is_ref = sent < R
                docs, grams = np.divmod(_unique(group[sent[is_ref]] * size + gram[is_ref]), size)
                df = np.bincount(grams, weights=documents[docs], minlength=size)[gram]
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
    if grow:
        for word in dict.fromkeys(flat):
            vocab.setdefault(word, len(vocab))
    word_ids = np.fromiter(map(vocab.get, flat, repeat(-1)), np.int64, count=len(flat))
    missing = np.flatnonzero(word_ids < 0)
    if missing.size:
        unseen = [flat[i] for i in missing.tolist()]
        local = {w: len(vocab) + j for j, w in enumerate(dict.fromkeys(unseen))}
        word_ids[missing] = np.fromiter(map(local.__getitem__, unseen), np.int64, count=len(unseen))
    if word_ids.size and word_ids.max() >= _MAX_ID:
        raise ValueError("more than 2**31 distinct words")
    return word_ids, lengths


def _unique(values: np.ndarray, counts: bool = False):
    """Sorted unique values (and their counts) by sorting: numpy 2's hash-based np.unique is slower here."""
    values = np.sort(values)
    first = np.empty(values.size, bool)
    if values.size:
        first[0] = True
        np.not_equal(values[1:], values[:-1], out=first[1:])
    if not counts:
        return values[first]
    starts = np.flatnonzero(first)
    return values[starts], np.diff(np.append(starts, values.size))


def _sentence_of_positions(lengths: np.ndarray) -> np.ndarray:
    """Sentence index of every flat word position."""
    return np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)


def _lookup(table: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """Compact ids of packed n-gram keys: the position in the sorted table, else table size + rank among the
    call's unseen keys. Returns (ids, size of the id space, sorted unseen keys)."""
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    first = np.empty(keys.size, bool)
    if keys.size:
        first[0] = True
        np.not_equal(keys[1:], keys[:-1], out=first[1:])
    distinct = keys[first]  # sorted distinct queries search the table several times faster than raw ones
    size = table.size
    ids = np.searchsorted(table, distinct)
    hit = ids < size
    hit[hit] = table[ids[hit]] == distinct[hit]
    new_keys = distinct[~hit]
    ids[~hit] = size + np.arange(new_keys.size)
    total = size + new_keys.size
    if total >= _MAX_ID:
        raise ValueError("more than 2**31 distinct n-grams of one order")
    out = np.empty(keys.size, np.int64)
    out[order] = ids[np.cumsum(first) - 1]
    return out, total, new_keys


# ---------------------------------------------------------------------- safetensors without the dependency
def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


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
        header[name] = {
            "dtype": names[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    _atomic_write(path, b"".join([struct.pack("<Q", len(head)), head, *blobs]))


def _parse_safetensors(raw: bytes, path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if len(raw) < 8:
        raise ValueError(f"{path} is not a safetensors file (too short)")
    (head_len,) = struct.unpack("<Q", raw[:8])
    if 8 + head_len > len(raw):
        raise ValueError(f"{path} is not a safetensors file (bad header length)")
    try:
        header = json.loads(raw[8 : 8 + head_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a safetensors file ({err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a safetensors file (header is not an object)")
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
