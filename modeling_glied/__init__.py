"""GLIED in the transformers API: config, model, generation, losses and rewards."""
from .configuration_glied import GLIEDConfig

__all__ = ["GLIEDConfig"]
