"""Everything between the world and the GLIED model: tokenizer, processor, feature readers, data sets, pipeline.

Importing the package registers the tokenizer and the processors (GLIED, HM-LSTM) with `AutoTokenizer` and
`AutoProcessor`, and the captioning pipeline under the "image-to-text" task of `transformers.pipeline`.
"""
from .pipeline_glied import GLIEDImageToTextPipeline, register_pipeline
from .image_regions import PIXEL_FEATURE_SIZE, RegionFeatureExtractor, attribute_candidates
from .processing_glied import GLIEDProcessor, register_auto_classes
from .processing_hmlstm import HMLSTMProcessor, register_hmlstm_auto_classes
from .reranking import BeamReranker
from .tokenization_glied import (
    SPECIAL_TOKENS,
    GLIEDTokenizer,
    build_vocabulary,
    caption_normalizer,
    count_words,
    split_caption,
)

register_auto_classes()
register_hmlstm_auto_classes()
register_pipeline()

__all__ = [
    "PIXEL_FEATURE_SIZE",
    "SPECIAL_TOKENS",
    "RegionFeatureExtractor",
    "attribute_candidates",
    "BeamReranker",
    "GLIEDImageToTextPipeline",
    "GLIEDProcessor",
    "GLIEDTokenizer",
    "HMLSTMProcessor",
    "build_vocabulary",
    "caption_normalizer",
    "count_words",
    "split_caption",
]
