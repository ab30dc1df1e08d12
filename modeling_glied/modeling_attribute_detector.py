"""The attribute-word detector of GLIED: multiple-instance learning of words from region features (Fang et al. 2015).

GLIED reads, besides the regions `I`, the attribute words `A` of an image, predicted by a word detector trained
with multiple-instance learning ("From captions to visual concepts and back", Fang et al., CVPR 2015): an image is
a bag of regions; a word is in the image when at least one region shows it. Each region `r_i` gives every word
`w_j` a probability `p_ij = sigmoid(f(r_i) . w_j + b_j)`, and the image-level probability is their noisy-OR
`P(w_j | I) = 1 - prod_i (1 - p_ij)`, trained with binary cross-entropy against the words of the image's captions.

Choices the paper leaves open (documented for the model card): `f` is one hidden layer
(Linear, GELU, LayerNorm, dropout) on the raw region features; the word biases start at the logit of
`initial_region_probability` so that the noisy-OR over tens of regions does not start near 1; the loss is the
mean binary cross-entropy over images and words, computed from the log-space noisy-OR.

Config and model live in this one file, which imports torch, transformers and the config checks only, so that a
saved checkpoint carries it (and `config_checks.py`) and loads with `trust_remote_code=True` where glied is not
installed.
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import ModelOutput

try:  # transformers >= 5
    from transformers import PreTrainedConfig
except ImportError:  # transformers 4.x
    from transformers import PretrainedConfig as PreTrainedConfig

from .config_checks import check_fractions, check_positive_ints, check_positive_numbers

try:  # transformers >= 5: initialisers that leave loaded weights alone
    from transformers import initialization as init
except ImportError:  # transformers 4.x
    from torch.nn import init


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------
class GLIEDAttributeDetectorConfig(PreTrainedConfig):
    r"""
    Configuration of [`GLIEDAttributeDetector`]. The detector vocabulary lives here, so a saved detector names
    the words it predicts.

    Args:
        attribute_words (`list[str]`): the detector vocabulary, word `j` is output `j` (e.g. the 1,000 most frequent
            content words of the training captions, `processing.attributes.build_attribute_vocabulary`). Words are
            single, normalised caption words: non-empty, no whitespace, no duplicates.
        region_feature_size: width of the input region features (2048 for bottom-up features).
        hidden_size: width of the region encoder `f(r_i)`.
        hidden_dropout_prob: dropout on `f(r_i)` during training.
        initial_region_probability: every `p_ij` at initialisation (the word biases start at its logit); small, so
            that the noisy-OR over N regions, `1 - (1 - p)^N`, starts well below 1.
        initializer_range: standard deviation of the normal initialisation of the weights.
        layer_norm_eps: epsilon of the layer normalisation in `f`.
    """

    model_type = "glied_attribute_detector"

    def __init__(
        self,
        attribute_words=None,
        region_feature_size=2048,
        hidden_size=512,
        hidden_dropout_prob=0.1,
        initial_region_probability=0.01,
        initializer_range=0.02,
        layer_norm_eps=1e-5,
        **kwargs,
    ):
        self.attribute_words = list(attribute_words) if attribute_words is not None else []
        self.region_feature_size = region_feature_size
        self.hidden_size = hidden_size
        self.hidden_dropout_prob = hidden_dropout_prob
        self.initial_region_probability = initial_region_probability
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        super().__init__(**kwargs)
        self._validate_detector()

    def _validate_detector(self):
        check_positive_ints(self, "region_feature_size", "hidden_size")
        check_fractions(self, "hidden_dropout_prob")
        probability = self.initial_region_probability
        if not isinstance(probability, (int, float)) or isinstance(probability, bool) or not 0.0 < probability < 1.0:
            raise ValueError(
                f"GLIEDAttributeDetectorConfig.initial_region_probability must lie in (0, 1), got {probability!r}"
            )
        check_positive_numbers(self, "initializer_range", "layer_norm_eps")
        seen = set()
        for index, word in enumerate(self.attribute_words):
            if not isinstance(word, str) or not word or word != "".join(word.split()):
                raise ValueError(
                    f"GLIEDAttributeDetectorConfig.attribute_words must be single words (non-empty strings without "
                    f"whitespace), got {word!r} at position {index}"
                )
            if word in seen:
                raise ValueError(f"GLIEDAttributeDetectorConfig.attribute_words holds {word!r} twice")
            seen.add(word)

    @property
    def num_attribute_words(self):
        """Size of the detector vocabulary."""
        return len(self.attribute_words)


# ----------------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class GLIEDAttributeDetectorOutput(ModelOutput):
    """Image- and region-level word probabilities.

    loss: mean binary cross-entropy of `probabilities` against the multi-hot `labels` (when given).
    probabilities: `P(w_j | I)`, the noisy-OR over the valid regions, (B, V).
    region_probabilities: `p_ij`, (B, N, V); 0 at padded regions.
    logits: `f(r_i) . w_j + b_j`, (B, N, V), the log-odds of `p_ij` (padded regions included, unmasked).
    """

    loss: Optional[torch.FloatTensor] = None
    probabilities: Optional[torch.FloatTensor] = None
    region_probabilities: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------
class GLIEDAttributeRegionEncoder(nn.Module):
    """`f(r_i)`: one hidden layer on a raw region feature (Linear, GELU, LayerNorm, dropout)."""

    def __init__(self, config: GLIEDAttributeDetectorConfig):
        super().__init__()
        self.dense = nn.Linear(config.region_feature_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, region_features):
        return self.dropout(self.LayerNorm(F.gelu(self.dense(region_features))))


def log1mexp(x):
    """`log(1 - exp(x))` for `x < 0`, accurate at both ends (Maechler 2012) and with finite gradients everywhere."""
    near_zero = x > -math.log(2.0)
    # each branch sees only inputs where it is finite, so that torch.where passes no inf/nan gradient
    small = torch.log(-torch.expm1(torch.where(near_zero, x, torch.full_like(x, -math.log(2.0)))))
    large = torch.log1p(-torch.exp(torch.where(near_zero, torch.full_like(x, -math.log(2.0)), x)))
    return torch.where(near_zero, small, large)


class GLIEDAttributeDetectorPreTrainedModel(PreTrainedModel):
    config_class = GLIEDAttributeDetectorConfig
    base_model_prefix = "detector"
    main_input_name = "region_features"

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if module is getattr(self, "word_classifier", None):
            # p_ij = sigmoid(b_j) = initial_region_probability before training
            probability = self.config.initial_region_probability
            init.constant_(module.bias, math.log(probability / (1.0 - probability)))


class GLIEDAttributeDetector(GLIEDAttributeDetectorPreTrainedModel):
    """Multiple-instance-learning word detector: region features in, attribute-word probabilities out.

    Usage:
        detector = GLIEDAttributeDetector(GLIEDAttributeDetectorConfig(attribute_words=words))
        out = detector(region_features, region_mask, labels=multi_hot)       # out.loss, out.probabilities
        detector.predict(region_features, region_mask, top_k=20)             # [[(word, probability), ...], ...]
    """

    def __init__(self, config: GLIEDAttributeDetectorConfig):
        super().__init__(config)
        if not config.attribute_words:
            raise ValueError("GLIEDAttributeDetector needs a vocabulary: config.attribute_words is empty")
        self.region_encoder = GLIEDAttributeRegionEncoder(config)
        self.word_classifier = nn.Linear(config.hidden_size, config.num_attribute_words)  # rows w_j, biases b_j
        self.post_init()

    @property
    def attribute_words(self):
        return self.config.attribute_words

    def _check_inputs(self, region_features, region_mask, labels):
        if region_features is None:
            raise ValueError("GLIEDAttributeDetector needs region_features of shape (batch, regions, region_feature_size)")
        if region_features.dim() != 3:
            raise ValueError(
                f"region_features must be 3-D (batch, regions, features), got shape {tuple(region_features.shape)}"
            )
        if region_features.shape[-1] != self.config.region_feature_size:
            raise ValueError(
                f"region_features have width {region_features.shape[-1]}, the detector expects "
                f"region_feature_size={self.config.region_feature_size}"
            )
        if region_mask is not None and tuple(region_mask.shape) != tuple(region_features.shape[:2]):
            raise ValueError(
                f"region_mask has shape {tuple(region_mask.shape)}, expected {tuple(region_features.shape[:2])}"
            )
        expected = (region_features.shape[0], self.config.num_attribute_words)
        if labels is not None and tuple(labels.shape) != expected:
            raise ValueError(
                f"labels have shape {tuple(labels.shape)}, expected (batch, attribute words) = {expected}: one "
                f"multi-hot row per image"
            )

    def forward(self, region_features=None, region_mask=None, labels=None, return_dict=None):
        r"""
        Args:
            region_features: (B, N, F) float region features.
            region_mask: (B, N), 1 for a valid region and 0 for padding (long or bool); all valid when omitted.
                Padded regions take no part: outputs do not depend on them. An image without a valid region has
                probability 0 for every word.
            labels: (B, V) multi-hot float targets in [0, 1], column `j` for `config.attribute_words[j]`.

        Returns:
            [`GLIEDAttributeDetectorOutput`] with `loss` (when `labels` are given), `probabilities` (B, V),
            `region_probabilities` (B, N, V) and `logits` (B, N, V).
        """
        self._check_inputs(region_features, region_mask, labels)
        # p_ij = sigmoid(f(r_i) . w_j + b_j)
        logits = self.word_classifier(self.region_encoder(region_features))
        if region_mask is None:
            valid = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
        else:
            valid = region_mask.to(device=logits.device, dtype=torch.bool)
        valid = valid.unsqueeze(-1)  # (B, N, 1)
        # the noisy-OR in float32 at least: half precision would floor log P near -10
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        log_not_region = F.logsigmoid(-logits).masked_fill(~valid, 0.0)  # log(1 - p_ij), 0 at padding
        # P(w_j | I) = 1 - prod_i (1 - p_ij), in log space: log(1 - P_j) = sum_i log(1 - p_ij)
        log_not_image = log_not_region.sum(dim=1)
        probabilities = -torch.expm1(log_not_image)
        region_probabilities = torch.sigmoid(logits).masked_fill(~valid, 0.0)

        loss = None
        if labels is not None:
            labels = labels.to(device=log_not_image.device, dtype=log_not_image.dtype)
            # BCE = -[y log P + (1 - y) log(1 - P)]; log P = log(1 - exp(log(1 - P))), kept finite when P underflows
            tiny = torch.finfo(log_not_image.dtype).tiny
            log_image = log1mexp(log_not_image.clamp(max=-tiny))
            loss = -(labels * log_image + (1.0 - labels) * log_not_image).mean()

        output = GLIEDAttributeDetectorOutput(
            loss=loss, probabilities=probabilities, region_probabilities=region_probabilities, logits=logits
        )
        if return_dict is False:
            return output.to_tuple()
        return output

    @torch.no_grad()
    def predict(self, region_features, region_mask=None, top_k=20, threshold=None):
        r"""
        The attribute words of each image, most probable first.

        Args:
            region_features: (B, N, F) or, for one image, (N, F); a torch tensor or anything `torch.as_tensor` takes.
            region_mask: (B, N) or (N,), 1 valid / 0 padding; all valid when omitted.
            top_k: keep at most this many words per image (`None`: no limit).
            threshold: keep only words with probability >= threshold (`None`: no threshold).

        Returns:
            one list per image of `(word, probability)` pairs, sorted by decreasing probability (ties: vocabulary
            order). Runs in evaluation mode (no dropout) and restores the previous mode.
        """
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k <= 0):
            raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
        if threshold is not None and (
            not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0.0 <= threshold <= 1.0
        ):
            raise ValueError(f"threshold must lie in [0, 1] or be None, got {threshold!r}")
        parameter = next(self.parameters())
        region_features = torch.as_tensor(region_features, dtype=parameter.dtype, device=parameter.device)
        if region_mask is not None:
            region_mask = torch.as_tensor(region_mask, device=parameter.device)
        if region_features.dim() == 2:
            region_features = region_features.unsqueeze(0)
            region_mask = region_mask.unsqueeze(0) if region_mask is not None else None
        was_training = self.training
        self.eval()
        try:
            probabilities = self(region_features, region_mask).probabilities.float().cpu()
        finally:
            self.train(was_training)
        # stable sort: equal probabilities keep vocabulary order
        order = torch.sort(probabilities, dim=-1, descending=True, stable=True).indices
        if top_k is not None:
            order = order[:, :top_k]
        words = self.config.attribute_words
        predictions = []
        for row, indices in zip(probabilities.tolist(), order.tolist()):
            ranked = [(words[j], row[j]) for j in indices]
            if threshold is not None:
                ranked = [(word, probability) for word, probability in ranked if probability >= threshold]
            predictions.append(ranked)
        return predictions


__all__ = [
    "GLIEDAttributeDetector",
    "GLIEDAttributeDetectorConfig",
    "GLIEDAttributeDetectorOutput",
    "GLIEDAttributeDetectorPreTrainedModel",
]
