"""GLIED model configuration.

GLIED is the captioner of "Exploring and Distilling Cross-Modal Information for Image Captioning"
(Liu, Ren, Liu, Lei and Sun, IJCAI 2019). Its three parts are independent switches; with all three off the
model is the paper's cross-modal Base model (`GLIEDConfig.base()`).
"""

try:  # transformers >= 5
    from transformers import PreTrainedConfig
except ImportError:  # transformers 4.x
    from transformers import PretrainedConfig as PreTrainedConfig

from .config_checks import check_fractions, check_positive_ints, check_switches, check_token_ids


class GLIEDConfig(PreTrainedConfig):
    r"""
    Configuration of [`GLIEDForCaptioning`]. Defaults are the paper's setting (d_model 512, 8 heads, feed-forward
    2048, one layer, bottom-up region features of 2048 floats).

    Args:
        vocab_size: caption (and attribute) vocabulary size, special tokens included.
        hidden_size: `d_model`, width of every representation.
        num_attention_heads: heads of every multi-head attention `H(Q, K, V)`.
        intermediate_size: inner width of the position-wise feed-forward blocks.
        num_hidden_layers: stacked decoder layers (and global visual distilling layers).
        region_feature_size: width of the input region features `I` (2048 for bottom-up features).
        region_box_size: width of the box geometry (normalised x1, y1, x2, y2 and area).
        hidden_dropout_prob: dropout inside `G(h; x) = LayerNorm(x + Dropout(h))` and on embeddings.
        attention_probs_dropout_prob: dropout on attention weights.
        label_smoothing: label smoothing of the cross-entropy loss.
        initializer_range: standard deviation of the normal initialisation.
        layer_norm_eps: epsilon of the layer normalisations.
        global_visual_distilling: `I~ = G(H_vd(I, I, I), I)`, self-attention among regions.
        global_attribute_distilling: `t~ = G(H_ad(x, A, A), x)`, the input word attends to the attribute words.
        local_distilling: `c~ = G(H_vl(c_g, I, I) + H_al(c_g, A, A), c_g)`, revisit the raw regions and words.
        pad_token_id, bos_token_id, eos_token_id, unk_token_id: the special token ids (the tokenizer agrees).
    """

    model_type = "glied"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=10000,
        hidden_size=512,
        num_attention_heads=8,
        intermediate_size=2048,
        num_hidden_layers=1,
        region_feature_size=2048,
        region_box_size=5,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        label_smoothing=0.0,
        initializer_range=0.02,
        layer_norm_eps=1e-5,
        global_visual_distilling=True,
        global_attribute_distilling=True,
        local_distilling=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        unk_token_id=3,
        tie_word_embeddings=True,
        use_cache=True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.region_feature_size = region_feature_size
        self.region_box_size = region_box_size
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.label_smoothing = label_smoothing
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.global_visual_distilling = global_visual_distilling
        self.global_attribute_distilling = global_attribute_distilling
        self.local_distilling = local_distilling
        self.unk_token_id = unk_token_id
        self.use_cache = use_cache
        kwargs.setdefault("is_encoder_decoder", True)
        kwargs.setdefault("decoder_start_token_id", bos_token_id)
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.tie_word_embeddings = tie_word_embeddings
        self._validate_glied()

    def _validate_glied(self):
        check_positive_ints(self, "vocab_size", "hidden_size", "num_attention_heads", "intermediate_size",
                            "num_hidden_layers", "region_feature_size")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"GLIEDConfig.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}) so that every head has the same width"
            )
        if not isinstance(self.region_box_size, int) or isinstance(self.region_box_size, bool) or self.region_box_size < 0:
            raise ValueError(f"GLIEDConfig.region_box_size must be an integer >= 0, got {self.region_box_size!r}")
        check_fractions(self, "hidden_dropout_prob", "attention_probs_dropout_prob", "label_smoothing")
        check_switches(self, "global_visual_distilling", "global_attribute_distilling", "local_distilling")
        ids = {name: getattr(self, name) for name in ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id")}
        check_token_ids(self, *ids)
        if len(set(ids.values())) != len(ids):
            raise ValueError(f"GLIEDConfig special token ids must be distinct, got {ids}")

    @property
    def is_base_model(self):
        """True when every GLIED part is switched off: the paper's cross-modal Base model."""
        return not (self.global_visual_distilling or self.global_attribute_distilling or self.local_distilling)

    @classmethod
    def base(cls, **kwargs):
        """The paper's Base model: context attention, visual and semantic attention, word selection."""
        switches = dict(global_visual_distilling=False, global_attribute_distilling=False, local_distilling=False)
        return cls(**{**switches, **kwargs})


__all__ = ["GLIEDConfig"]
