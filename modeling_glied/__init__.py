"""GLIED in the transformers API: config, model, generation, losses and rewards.

Importing the package registers GLIED with the Auto classes (`AutoConfig`, `AutoModel`, and the image-text
generation Auto class of the installed transformers).
"""
import transformers

from .cider import CiderD
from .configuration_glied import GLIEDConfig
from .modeling_attribute_detector import (
    GLIEDAttributeDetector,
    GLIEDAttributeDetectorConfig,
    GLIEDAttributeDetectorOutput,
)
from .modeling_glied import GLIEDCaptioningOutput, GLIEDEncoderOutput, GLIEDForCaptioning, GLIEDModel
from .modeling_hmlstm import HMLSTMConfig, HMLSTMModel, HMLSTMOutput


def _register_auto_classes():
    transformers.AutoConfig.register("glied", GLIEDConfig, exist_ok=True)
    transformers.AutoModel.register(GLIEDConfig, GLIEDModel, exist_ok=True)
    # the Auto class for image-text generation: AutoModelForImageTextToText in 5.x, AutoModelForVision2Seq in 4.x
    for name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq"):
        auto_class = getattr(transformers, name, None)
        if auto_class is not None:
            auto_class.register(GLIEDConfig, GLIEDForCaptioning, exist_ok=True)
    transformers.AutoConfig.register("glied_attribute_detector", GLIEDAttributeDetectorConfig, exist_ok=True)
    transformers.AutoModel.register(GLIEDAttributeDetectorConfig, GLIEDAttributeDetector, exist_ok=True)
    transformers.AutoConfig.register("hmlstm", HMLSTMConfig, exist_ok=True)
    transformers.AutoModel.register(HMLSTMConfig, HMLSTMModel, exist_ok=True)
    # a saved checkpoint carries the code, so it loads with trust_remote_code=True where glied is not installed
    GLIEDConfig.register_for_auto_class()
    GLIEDModel.register_for_auto_class("AutoModel")
    GLIEDAttributeDetectorConfig.register_for_auto_class()
    GLIEDAttributeDetector.register_for_auto_class("AutoModel")
    HMLSTMConfig.register_for_auto_class()
    HMLSTMModel.register_for_auto_class("AutoModel")
    GLIEDForCaptioning.register_for_auto_class(
        "AutoModelForImageTextToText" if hasattr(transformers, "AutoModelForImageTextToText") else "AutoModelForVision2Seq"
    )


_register_auto_classes()

__all__ = [
    "CiderD",
    "GLIEDAttributeDetector",
    "GLIEDAttributeDetectorConfig",
    "GLIEDAttributeDetectorOutput",
    "GLIEDCaptioningOutput",
    "GLIEDConfig",
    "GLIEDEncoderOutput",
    "GLIEDForCaptioning",
    "GLIEDModel",
    "HMLSTMConfig",
    "HMLSTMModel",
    "HMLSTMOutput",
]
