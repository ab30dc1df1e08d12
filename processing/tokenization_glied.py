"""Word-level caption tokenizer of GLIED, on the `tokenizers` library and usable as a transformers fast tokenizer.

Captions are lower-cased and stripped of punctuation the way the Karpathy / self-critical preprocessing does
(letters, digits and apostrophes inside words are kept, every other character becomes a space), then split on
whitespace; every word is one token. The special tokens come first and agree with `GLIEDConfig`:
`<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3.

Encoding a text does not add `<bos>`/`<eos>`: the processor builds `decoder_input_ids` and `labels` from the plain
word ids (docs/CONVENTIONS.md).
"""

import collections
import os
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel

try:  # transformers >= 5
    from transformers import TokenizersBackend as _FastTokenizerBase

    _TRANSFORMERS_4 = False
except ImportError:  # transformers 4.x
    from transformers import PreTrainedTokenizerFast as _FastTokenizerBase

    _TRANSFORMERS_4 = True

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)  # ids 0, 1, 2, 3 (GLIEDConfig defaults)

_WORD_CHARACTER = r"\p{L}\p{M}\p{N}"


def caption_normalizer():
    """The `tokenizers` normaliser of the caption rule (the one home of the rule, used for encoding and counting).

    NFC, curly apostrophes to straight ones, lower-case, every character that is not a letter, digit or apostrophe
    becomes a space, and so does every apostrophe that is not inside a word ("dogs' toys" -> "dogs toys",
    "man's" stays).
    """
    return normalizers.Sequence(
        [
            normalizers.NFC(),
            normalizers.Replace("\u2019", "'"),
            normalizers.Lowercase(),
            normalizers.Replace(Regex(rf"[^{_WORD_CHARACTER}']"), " "),
            normalizers.Replace(Regex(rf"(?<![{_WORD_CHARACTER}])'|'(?![{_WORD_CHARACTER}])"), " "),
        ]
    )


_NORMALIZER = caption_normalizer()
_PRE_TOKENIZER = pre_tokenizers.WhitespaceSplit()


def split_caption(text):
    """The words of one caption after normalisation: `"A man's dog, running."` -> `["a", "man's", "dog", "running"]`."""
    if not isinstance(text, str):
        raise ValueError(f"a caption must be a string, got {type(text).__name__}: {text!r}")
    return [word for word, _ in _PRE_TOKENIZER.pre_tokenize_str(_NORMALIZER.normalize_str(text))]


def _iter_texts(captions):
    """Strings of `captions`: a string, or any nesting of iterables of strings (e.g. five captions per image)."""
    if isinstance(captions, str):
        yield captions
        return
    if not isinstance(captions, Iterable):
        raise ValueError(f"captions must be strings or lists of strings, got {type(captions).__name__}")
    for item in captions:
        yield from _iter_texts(item)


def count_words(captions):
    """`collections.Counter` of the normalised words of `captions` (strings or nested lists of strings)."""
    counts = collections.Counter()
    for text in _iter_texts(captions):
        counts.update(split_caption(text))
    return counts


def build_vocabulary(captions, count_threshold=5, extra_words=None):
    """Word -> id vocabulary built from training captions.

    A word is kept when it occurs MORE than `count_threshold` times (`count > count_threshold`), the rule of
    Karpathy's neuraltalk2 `prepro.py` and self-critical.pytorch `prepro_labels.py`; on the COCO Karpathy training
    captions the default threshold 5 gives their 9,487 words. Rarer words become `<unk>`.

    Ids: the four special tokens (0-3), then the kept words by decreasing count and alphabetically among equal
    counts (deterministic, independent of caption order), then `extra_words` (e.g. attribute words the word
    detector may output), normalised like captions, in their given order, where not already present.

    Args:
        captions: strings, or lists of strings (e.g. the five captions of each image).
        count_threshold: words occurring `count_threshold` times or fewer are left out.
        extra_words: words forced into the vocabulary whatever their count.
    """
    if not isinstance(count_threshold, int) or isinstance(count_threshold, bool) or count_threshold < 0:
        raise ValueError(f"count_threshold must be an integer >= 0, got {count_threshold!r}")
    counts = count_words(captions)
    kept = sorted((word for word, count in counts.items() if count > count_threshold),
                  key=lambda word: (-counts[word], word))
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for word in kept:
        vocab[word] = len(vocab)
    if extra_words is not None:
        for word in count_words(extra_words):  # Counter keeps first-appearance order
            if word not in vocab:
                vocab[word] = len(vocab)
    return vocab


class GLIEDTokenizer(_FastTokenizerBase):
    r"""
    Word-level caption tokenizer (a transformers fast tokenizer backed by a `tokenizers` WordLevel model).

    Args:
        vocab (`dict[str, int]`, *optional*): word -> id, the special tokens at ids 0-3 (`<pad>`, `<bos>`,
            `<eos>`, `<unk>`). Without it the vocabulary holds the special tokens only. Build one from captions with
            [`build_vocabulary`] or [`GLIEDTokenizer.from_captions`].
        pad_token, bos_token, eos_token, unk_token: the special tokens (defaults `<pad>`, `<bos>`, `<eos>`, `<unk>`).
    """

    vocab_files_names = {"tokenizer_file": "tokenizer.json"}
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"
    slow_tokenizer_class = None

    def __init__(
        self,
        vocab=None,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        **kwargs,
    ):
        specials = [str(pad_token), str(bos_token), str(eos_token), str(unk_token)]
        tokenizer_file = kwargs.get("tokenizer_file")
        if vocab is None and tokenizer_file is not None and os.path.isfile(tokenizer_file):
            # transformers 4.x loads by passing tokenizer.json (5.x hands its vocabulary over as `vocab`)
            vocab = Tokenizer.from_file(tokenizer_file).get_vocab()
        if vocab is None:
            vocab = {token: index for index, token in enumerate(specials)}
        if not isinstance(vocab, dict):
            raise ValueError(f"vocab must be a dict word -> id, got {type(vocab).__name__}")
        vocab = {str(word): int(index) for word, index in vocab.items()}
        for index, token in enumerate(specials):
            if vocab.get(token) != index:
                raise ValueError(
                    f"the special token {token!r} must have id {index} (GLIEDConfig: pad 0, bos 1, eos 2, unk 3), "
                    f"the vocabulary gives it {vocab.get(token)!r}"
                )
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise ValueError("vocabulary ids must be the consecutive integers 0 .. len(vocab) - 1")
        # The vocabulary is kept by the `tokenizers` model; `convert_to_native_format` hands it back on loading.
        kwargs.pop("tokenizer_object", None)
        kwargs.pop("tokenizer_file", None)
        kwargs.pop("post_processor", None)
        self._tokenizer = Tokenizer(WordLevel(vocab, unk_token=str(unk_token)))
        self._tokenizer.normalizer = caption_normalizer()
        self._tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        # No decoder: `tokenizers` joins the decoded words with single spaces.
        self._tokenizer.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1")
        if _TRANSFORMERS_4:  # the 4.x base class builds its backend from `tokenizer_object`, ignoring `_tokenizer`
            kwargs["tokenizer_object"] = self._tokenizer
        kwargs.setdefault("padding_side", "right")
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        # "<eos>" typed in a caption is text ("eos"), never the control token: captions cannot end themselves
        kwargs.setdefault("split_special_tokens", True)
        super().__init__(
            pad_token=pad_token,
            bos_token=bos_token,
            eos_token=eos_token,
            unk_token=unk_token,
            **kwargs,
        )

    @classmethod
    def from_captions(cls, captions, count_threshold=5, extra_words=None, **kwargs):
        """Tokenizer whose vocabulary is built from `captions` by [`build_vocabulary`] (words seen more than
        `count_threshold` times, plus `extra_words`)."""
        return cls(vocab=build_vocabulary(captions, count_threshold=count_threshold, extra_words=extra_words),
                   **kwargs)

    def split_caption(self, text):
        """Normalised words of `text` (before the vocabulary look-up)."""
        return split_caption(text)

    def unknown_words(self, texts):
        """`collections.Counter` of the words of `texts` (a string or nested lists of strings) that are not in the
        vocabulary, i.e. that encode to `<unk>`."""
        vocab = self.get_vocab()
        counts = count_words(texts)
        return collections.Counter({word: count for word, count in counts.items() if word not in vocab})


def register_tokenizer():
    """Register [`GLIEDTokenizer`] with `AutoTokenizer` for `GLIEDConfig` (and `GLIEDConfig` with `AutoConfig`).

    Needed so that `AutoTokenizer.from_pretrained(folder)` finds the class named in `tokenizer_config.json`;
    safe to call more than once.
    """
    from transformers import AutoConfig, AutoTokenizer

    from modeling_glied import GLIEDConfig

    AutoConfig.register(GLIEDConfig.model_type, GLIEDConfig, exist_ok=True)
    try:  # transformers >= 5
        AutoTokenizer.register(GLIEDConfig, tokenizer_class=GLIEDTokenizer, exist_ok=True)
    except TypeError:  # transformers 4.x: a fast tokenizer class
        AutoTokenizer.register(GLIEDConfig, fast_tokenizer_class=GLIEDTokenizer, exist_ok=True)


__all__ = [
    "GLIEDTokenizer",
    "build_vocabulary",
    "caption_normalizer",
    "count_words",
    "register_tokenizer",
    "split_caption",
    "SPECIAL_TOKENS",
]
