"""Everything between the world and the GLIED model: tokenizer, processor, feature readers, data sets, pipeline.

Importing the package registers the tokenizer and processor with `AutoTokenizer` and `AutoProcessor`.
"""
from .processing_glied import GLIEDProcessor, register_auto_classes
from .tokenization_glied import (
    SPECIAL_TOKENS,
    GLIEDTokenizer,
    build_vocabulary,
    caption_normalizer,
    count_words,
    split_caption,
)

register_auto_classes()

__all__ = [
    "SPECIAL_TOKENS",
    "GLIEDProcessor",
    "GLIEDTokenizer",
    "build_vocabulary",
    "caption_normalizer",
    "count_words",
    "split_caption",
]
