"""GLIED: Global-and-Local Information Exploring-and-Distilling for image captioning (Liu et al., IJCAI 2019).

Read top to bottom: the building blocks `H(Q, K, V)` and `G(h; x)`, the region embedding, global visual
distilling (the encoder), the decoder layer with the paper's formulas in order, and `GLIEDForCaptioning`.
With every GLIED switch off the same code is the paper's cross-modal Base model.

This file imports torch and transformers only, so it travels with a checkpoint for `trust_remote_code=True`.
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import ModelOutput

from .configuration_glied import GLIEDConfig


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class GLIEDEncoderOutput(ModelOutput):
    """What the decoder reads from an image.

    last_hidden_state: `I~`, the regions after global visual distilling (`I` when it is switched off).
    region_states: `I`, the projected raw regions. attribute_states: `A`, the embedded attribute words.
    attentions: per layer, the region groupings `H_vd` attends with, (B, heads, N, N).
    memory_keys / memory_values: (B, layers, heads, M, head_size), the image memories already projected for every
        decoder layer's attentions (what `generate` runs once per image, so that beams and samples share them).
    """

    last_hidden_state: Optional[torch.FloatTensor] = None
    region_states: Optional[torch.FloatTensor] = None
    attribute_states: Optional[torch.FloatTensor] = None
    region_mask: Optional[torch.BoolTensor] = None
    attribute_mask: Optional[torch.BoolTensor] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None
    memory_keys: Optional[torch.FloatTensor] = None
    memory_values: Optional[torch.FloatTensor] = None


@dataclass
class GLIEDCaptioningOutput(ModelOutput):
    """Loss, next-word logits, the cache, and on request every attention map of the model.

    decoder_attentions: context attention `H_x` over previous words, per layer (B, heads, T, S).
    cross_attentions: visual attention `H_v` of each word over the (distilled) regions, per layer (B, heads, T, N).
    attribute_attentions: `H_ad` (global attribute distilling, the attribute collocations of each input word) or,
        in the Base model, the semantic attention `H_a`; per layer (B, heads, T, K).
    local_region_attentions / local_attribute_attentions: `H_vl` / `H_al` of local cross-modal distilling.
    encoder_attentions: region groupings of global visual distilling, per layer (B, heads, N, N).
    """

    loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    past_key_values: Optional[Cache] = None
    decoder_hidden_states: Optional[tuple] = None
    decoder_attentions: Optional[tuple] = None
    cross_attentions: Optional[tuple] = None
    attribute_attentions: Optional[tuple] = None
    local_region_attentions: Optional[tuple] = None
    local_attribute_attentions: Optional[tuple] = None
    encoder_last_hidden_state: Optional[torch.FloatTensor] = None
    encoder_hidden_states: Optional[tuple] = None
    encoder_attentions: Optional[tuple] = None


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------
class GLIEDAttention(nn.Module):
    """Multi-head attention `H(Q, K, V) = [A_1; ...; A_k] W_k` with scaled dot-product heads.

    Keys and values are projected once per memory (`project_memory`) so that incremental decoding and beam search
    reuse them; a query row whose memory is entirely masked (an image with no attribute words) returns zeros.
    """

    def __init__(self, config: GLIEDConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.output = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = config.attention_probs_dropout_prob

    def _split_heads(self, states):
        batch, length, _ = states.shape
        return states.view(batch, length, self.num_heads, self.head_size).transpose(1, 2)

    def project_memory(self, memory):
        """Keys and values of a memory (B, M, d) -> two tensors (B, heads, M, head_size)."""
        return self._split_heads(self.key(memory)), self._split_heads(self.value(memory))

    def forward(self, query, keys, values, mask=None, output_attentions=False):
        """query (B, T, d); keys/values (B, heads, M, head_size); mask (B, 1 or T, M) bool, True = attend."""
        batch, length, hidden = query.shape
        if keys.shape[2] == 0:  # an empty memory (no attribute words in the whole batch) contributes nothing
            empty = query.new_zeros(batch, self.num_heads, length, 0) if output_attentions else None
            return query.new_zeros(batch, length, hidden), empty
        q = self._split_heads(self.query(query))
        dropout = self.dropout if self.training else 0.0
        has_memory = None
        if mask is not None:
            has_memory = mask.any(dim=-1, keepdim=True)  # (B, T or 1, 1)
            # rows with nothing to attend to attend everywhere, finite, and are zeroed below
            mask = (mask | ~has_memory).unsqueeze(1)
        if output_attentions:
            # A(Q, K, V)_i = softmax(Q W_i^Q (K W_i^K)^T / sqrt(d_k)) V W_i^V
            scores = q @ keys.transpose(-1, -2) / math.sqrt(self.head_size)
            if mask is not None:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            weights = scores.softmax(dim=-1)
            if has_memory is not None:
                weights = weights * has_memory.unsqueeze(1)
            context = F.dropout(weights, dropout, self.training) @ values
        else:
            weights = None
            context = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=dropout)
        context = context.transpose(1, 2).reshape(batch, length, hidden)
        out = self.output(context)
        if has_memory is not None:
            out = out * has_memory
        return out, weights


class GLIEDShortcut(nn.Module):
    """`G(h; x) = LayerNorm(x + Dropout(h))`: shortcut connection, dropout and layer normalisation."""

    def __init__(self, config: GLIEDConfig):
        super().__init__()
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, h, x):
        # G(h; x) = LayerNorm(x + Dropout(h))
        return self.LayerNorm(x + self.dropout(h))


class GLIEDFeedForward(nn.Module):
    """Position-wise feed-forward block with its own `G`: `G(W_2 ReLU(W_1 c), c)`."""

    def __init__(self, config: GLIEDConfig):
        super().__init__()
        self.intermediate = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.shortcut = GLIEDShortcut(config)

    def forward(self, c):
        # G(W_2 ReLU(W_1 c), c)
        return self.shortcut(self.output(self.dropout(F.relu(self.intermediate(c)))), c)


def sinusoidal_positions(positions, hidden_size):
    """Fixed sinusoidal position encodings (Vaswani et al. 2017) for integer positions (T,) -> (T, d)."""
    half = hidden_size // 2
    frequencies = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=positions.device, dtype=torch.float32) / half
    )
    angles = positions.float()[:, None] * frequencies[None, :]
    encoding = torch.cat([angles.sin(), angles.cos()], dim=-1)
    if hidden_size % 2:
        encoding = F.pad(encoding, (0, 1))
    return encoding


def box_geometry(boxes):
    """Normalised boxes (B, N, 4) x1 y1 x2 y2 -> geometry (B, N, 5): the corners and the relative area."""
    area = (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    return torch.cat([boxes, area.unsqueeze(-1)], dim=-1)


# ----------------------------------------------------------------------------------------------------------------
# Encoder side: region and attribute embedding, global visual distilling
# ----------------------------------------------------------------------------------------------------------------
class GLIEDRegionEmbedding(nn.Module):
    """`I`: region features projected to d_model, plus the box geometry when boxes are given."""

    def __init__(self, config: GLIEDConfig):
        super().__init__()
        self.projection = nn.Linear(config.region_feature_size, config.hidden_size)
        self.box_projection = nn.Linear(config.region_box_size, config.hidden_size) if config.region_box_size else None
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, region_features, region_boxes=None):
        states = F.relu(self.projection(region_features))
        if region_boxes is not None and self.box_projection is not None:
            states = states + self.box_projection(box_geometry(region_boxes.to(states.dtype)))
        return self.dropout(self.LayerNorm(states))


class GLIEDGlobalVisualDistilling(nn.Module):
    """Global visual distilling: self-attention among regions learns region groupings."""

    def __init__(self, config: GLIEDConfig):
        super().__init__()
        self.attention = GLIEDAttention(config)  # H_vd
        self.shortcut = GLIEDShortcut(config)
        self.feed_forward = GLIEDFeedForward(config)

    def forward(self, regions, region_mask, output_attentions=False):
        keys, values = self.attention.project_memory(regions)
        groupings, weights = self.attention(regions, keys, values, region_mask[:, None, :], output_attentions)
        # I~ = G(H_vd(I, I, I), I)
        distilled = self.shortcut(groupings, regions)
        return self.feed_forward(distilled), weights


class GLIEDEncoder(nn.Module):
    """Everything computed once per image: `I`, `A` and `I~`."""

    def __init__(self, config: GLIEDConfig, embed_tokens: nn.Embedding):
        super().__init__()
        self.config = config
        self.embed_tokens = embed_tokens
        self.embed_scale = math.sqrt(config.hidden_size)
        self.region_embedding = GLIEDRegionEmbedding(config)
        self.attribute_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList(
            [GLIEDGlobalVisualDistilling(config) for _ in range(config.num_hidden_layers)]
            if config.global_visual_distilling
            else []
        )

    def forward(
        self,
        region_features,
        region_mask=None,
        region_boxes=None,
        attribute_ids=None,
        attribute_mask=None,
        output_attentions=False,
        output_hidden_states=False,
        return_dict=True,
        **kwargs,
    ):
        check_region_inputs(self.config, region_features, region_mask, region_boxes)
        batch, num_regions, _ = region_features.shape
        device = region_features.device
        region_features = region_features.to(self.region_embedding.projection.weight.dtype)
        if region_mask is None:
            region_mask = torch.ones(batch, num_regions, dtype=torch.bool, device=device)
        region_mask = region_mask.bool()
        if attribute_ids is None:
            attribute_ids = torch.zeros(batch, 0, dtype=torch.long, device=device)
        if attribute_mask is None:
            attribute_mask = attribute_ids.ne(self.config.pad_token_id)
        attribute_mask = attribute_mask.bool()

        regions = self.region_embedding(region_features, region_boxes)  # I
        # A: the attribute words share the caption word embedding
        attributes = self.attribute_dropout(self.embed_tokens(attribute_ids) * self.embed_scale)

        distilled, all_states, all_groupings = regions, (regions,), ()
        for layer in self.layers:
            distilled, groupings = layer(distilled, region_mask, output_attentions)
            all_states += (distilled,)
            all_groupings += (groupings,)
        return GLIEDEncoderOutput(
            last_hidden_state=distilled,
            region_states=regions,
            attribute_states=attributes,
            region_mask=region_mask,
            attribute_mask=attribute_mask,
            hidden_states=all_states if output_hidden_states else None,
            attentions=all_groupings if output_attentions else None,
        )


def check_region_inputs(config, region_features, region_mask, region_boxes):
    """Clear errors for inputs that would otherwise fail deep inside a matrix product."""
    if region_features is None:
        raise ValueError("GLIED needs region_features of shape (batch, regions, region_feature_size)")
    if region_features.dim() != 3:
        raise ValueError(f"region_features must be 3-D (batch, regions, features), got shape {tuple(region_features.shape)}")
    if region_features.shape[-1] != config.region_feature_size:
        raise ValueError(
            f"region_features have width {region_features.shape[-1]}, the model expects "
            f"region_feature_size={config.region_feature_size}"
        )
    if region_features.shape[1] == 0:
        raise ValueError("region_features hold no region: every image needs at least one region")
    if region_mask is not None and region_mask.shape != region_features.shape[:2]:
        raise ValueError(f"region_mask has shape {tuple(region_mask.shape)}, expected {tuple(region_features.shape[:2])}")
    if region_boxes is not None and region_boxes.shape != (*region_features.shape[:2], 4):
        raise ValueError(
            f"region_boxes has shape {tuple(region_boxes.shape)}, expected {(*region_features.shape[:2], 4)}"
        )


# ----------------------------------------------------------------------------------------------------------------
# Decoder side: the formulas of the paper in order
# ----------------------------------------------------------------------------------------------------------------
class GLIEDDecoderLayer(nn.Module):
    """One decoder layer. Each GLIED switch adds its part; all off is the Base model."""

    def __init__(self, config: GLIEDConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.global_attribute_distilling = config.global_attribute_distilling
        self.local_distilling = config.local_distilling
        if self.global_attribute_distilling:
            self.attribute_distilling = GLIEDAttention(config)  # H_ad
            self.attribute_distilling_shortcut = GLIEDShortcut(config)
        self.context_attention = GLIEDAttention(config)  # H_x
        self.context_shortcut = GLIEDShortcut(config)
        self.visual_attention = GLIEDAttention(config)  # H_v
        self.aspect_shortcut = GLIEDShortcut(config)
        if self.local_distilling:
            self.aspect_feed_forward = GLIEDFeedForward(config)
            self.local_visual_attention = GLIEDAttention(config)  # H_vl
            self.local_attribute_attention = GLIEDAttention(config)  # H_al
            self.local_shortcut = GLIEDShortcut(config)
        else:
            self.semantic_attention = GLIEDAttention(config)  # H_a
        self.feed_forward = GLIEDFeedForward(config)

    def memory_attentions(self):
        """The attentions over image memories, in cache order, each with the memory it reads."""
        attentions = []
        if self.global_attribute_distilling:
            attentions.append((self.attribute_distilling, "attributes"))
        attentions.append((self.visual_attention, "distilled_regions"))
        if self.local_distilling:
            attentions += [(self.local_visual_attention, "regions"), (self.local_attribute_attention, "attributes")]
        else:
            attentions.append((self.semantic_attention, "attributes"))
        return attentions

    def project_memories(self, memories):
        """Keys and values of every memory attention, concatenated along the memory axis (one cache entry)."""
        projected = [attention.project_memory(memories[name]) for attention, name in self.memory_attentions()]
        return torch.cat([k for k, _ in projected], dim=2), torch.cat([v for _, v in projected], dim=2)

    def split_memories(self, keys, values, memories):
        sizes = [memories[name].shape[1] for _, name in self.memory_attentions()]
        return list(zip(keys.split(sizes, dim=2), values.split(sizes, dim=2)))

    def forward(self, x, memories, memory_kv, context_kv, causal_mask, output_attentions=False):
        """x (B, T, d): the input words; memories: dict of I~, I, A and their masks; memory_kv: projected memories;
        context_kv: keys and values of the previous positions (cache included); causal_mask (T, S)."""
        kv = iter(memory_kv)
        region_mask = memories["region_mask"][:, None, :]
        attribute_mask = memories["attribute_mask"][:, None, :]
        maps = {}
        if self.global_attribute_distilling:
            collocations, maps["attribute"] = self.attribute_distilling(x, *next(kv), attribute_mask, output_attentions)
            # t~ = G(H_ad(x, A, A), x)
            t = self.attribute_distilling_shortcut(collocations, x)
        else:
            t = x
        keys, values = context_kv(t)
        context, maps["context"] = self.context_attention(t, keys, values, causal_mask[None], output_attentions)
        # x~ = G(H_x(t~, T~, T~), t~)
        x_tilde = self.context_shortcut(context, t)
        visual, maps["visual"] = self.visual_attention(x_tilde, *next(kv), region_mask, output_attentions)
        if self.local_distilling:
            # c_g = G(H_v(x~, I~, I~), x~)
            c_g = self.aspect_feed_forward(self.aspect_shortcut(visual, x_tilde))
            local_visual, maps["local_region"] = self.local_visual_attention(
                c_g, *next(kv), region_mask, output_attentions
            )
            local_attribute, maps["local_attribute"] = self.local_attribute_attention(
                c_g, *next(kv), attribute_mask, output_attentions
            )
            # c~ = G(H_vl(c_g, I, I) + H_al(c_g, A, A), c_g)
            aspect = self.local_shortcut(local_visual + local_attribute, c_g)
        else:
            semantic, maps["attribute"] = self.semantic_attention(x_tilde, *next(kv), attribute_mask, output_attentions)
            # c = G(H_v(x~, I, I) + H_a(x~, A, A), x~)   (Base; I~ in place of I with global visual distilling)
            aspect = self.aspect_shortcut(visual + semantic, x_tilde)
        return self.feed_forward(aspect), maps


def image_memories(encoder_outputs):
    """The memories the decoder attends to: `I~`, `I`, `A` and their masks."""
    return {
        "distilled_regions": encoder_outputs.last_hidden_state,
        "regions": encoder_outputs.region_states,
        "attributes": encoder_outputs.attribute_states,
        "region_mask": encoder_outputs.region_mask,
        "attribute_mask": encoder_outputs.attribute_mask,
    }


class GLIEDGenerationEncoder(nn.Module):
    """What `generate` runs once per image: the encoder, then every decoder layer's projection of the image
    memories, which beam search and sampling then copy per beam instead of recomputing."""

    def __init__(self, encoder, decoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, region_features, region_mask=None, region_boxes=None, attribute_ids=None, attribute_mask=None,
                output_attentions=False, output_hidden_states=False, return_dict=True, **kwargs):
        outputs = self.encoder(region_features, region_mask, region_boxes, attribute_ids, attribute_mask,
                               output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        memories = image_memories(outputs)
        keys, values = zip(*(layer.project_memories(memories) for layer in self.decoder.layers))
        outputs["memory_keys"] = torch.stack(keys, dim=1)
        outputs["memory_values"] = torch.stack(values, dim=1)
        return outputs


class GLIEDDecoder(nn.Module):
    def __init__(self, config: GLIEDConfig, embed_tokens: nn.Embedding):
        super().__init__()
        self.config = config
        self.embed_tokens = embed_tokens
        self.embed_scale = math.sqrt(config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList([GLIEDDecoderLayer(config, i) for i in range(config.num_hidden_layers)])

    def forward(self, decoder_input_ids, encoder_outputs, past_key_values=None, use_cache=False,
                output_attentions=False, output_hidden_states=False, image_index=None):
        """`encoder_outputs` has one row per image; `image_index` (one per caption row) pairs several captions
        with one image, whose memories are then projected once and shared."""
        batch, length = decoder_input_ids.shape
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        positions = torch.arange(past_length, past_length + length, device=decoder_input_ids.device)
        # x: word embedding plus position encoding
        hidden = self.embed_tokens(decoder_input_ids) * self.embed_scale
        hidden = self.dropout(hidden + sinusoidal_positions(positions, self.config.hidden_size).to(hidden.dtype))
        total = past_length + length
        causal_mask = torch.ones(length, total, dtype=torch.bool, device=hidden.device).tril(diagonal=past_length)
        memories = image_memories(encoder_outputs)
        masks = memories
        if image_index is not None:
            masks = {name: memories[name].index_select(0, image_index) for name in ("region_mask", "attribute_mask")}
        all_hidden = (hidden,) if output_hidden_states else None
        maps = {name: () for name in ("context", "visual", "attribute", "local_region", "local_attribute")}
        for layer in self.layers:
            if encoder_outputs.memory_keys is not None:  # projected once per image before generation
                keys = encoder_outputs.memory_keys[:, layer.layer_idx]
                values = encoder_outputs.memory_values[:, layer.layer_idx]
                if image_index is not None:
                    keys, values = keys.index_select(0, image_index), values.index_select(0, image_index)
                memory_kv = layer.split_memories(keys, values, memories)
            else:
                memory_kv = self._memory_kv(layer, memories, past_key_values if use_cache else None, image_index)

            def context_kv(t, layer=layer):
                keys, values = layer.context_attention.project_memory(t)
                if use_cache and past_key_values is not None:
                    keys, values = past_key_values.self_attention_cache.update(keys, values, layer.layer_idx)
                return keys, values

            hidden, layer_maps = layer(hidden, masks, memory_kv, context_kv, causal_mask, output_attentions)
            if output_hidden_states:
                all_hidden += (hidden,)
            for name, value in layer_maps.items():
                maps[name] += (value,)
        return hidden, all_hidden, maps

    @staticmethod
    def _memory_kv(layer, memories, cache, image_index):
        """Project the image memories once per image and keep them in the cross-attention cache."""
        if cache is not None and cache.is_updated.get(layer.layer_idx, False):
            entry = cache.cross_attention_cache.layers[layer.layer_idx]
            return layer.split_memories(entry.keys, entry.values, memories)
        keys, values = layer.project_memories(memories)
        if image_index is not None:
            keys, values = keys.index_select(0, image_index), values.index_select(0, image_index)
        if cache is not None:
            keys, values = cache.cross_attention_cache.update(keys, values, layer.layer_idx)
            cache.is_updated[layer.layer_idx] = True
        return layer.split_memories(keys, values, memories)


# ----------------------------------------------------------------------------------------------------------------
# Pretrained model classes
# ----------------------------------------------------------------------------------------------------------------
class GLIEDPreTrainedModel(PreTrainedModel):
    config_class = GLIEDConfig
    base_model_prefix = "model"
    main_input_name = "region_features"
    _no_split_modules = ["GLIEDDecoderLayer", "GLIEDGlobalVisualDistilling"]


class GLIEDModel(GLIEDPreTrainedModel):
    """The encoder and decoder of GLIED without the word-selection head."""

    _tied_weights_keys = {
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    }

    def __init__(self, config: GLIEDConfig):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.encoder = GLIEDEncoder(config, self.shared)
        self.decoder = GLIEDDecoder(config, self.shared)
        self.post_init()

    def get_input_embeddings(self):
        return self.shared

    def set_input_embeddings(self, value):
        self.shared = value
        self.encoder.embed_tokens = value
        self.decoder.embed_tokens = value

    def get_encoder(self, *args, **kwargs):
        return self.encoder

    def get_decoder(self):
        return self.decoder


def shift_tokens_right(labels, pad_token_id, decoder_start_token_id):
    """Teacher forcing: `<bos>` + caption (labels without their last token), -100 read as `<pad>`."""
    shifted = labels.new_full(labels.shape, pad_token_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


class GLIEDForCaptioning(GLIEDPreTrainedModel, GenerationMixin):
    """GLIED (or, with the switches off, the Base model) with word selection `y ~ softmax(W_c c~)`."""

    _tied_weights_keys = {"lm_head.weight": "model.shared.weight"}

    def __init__(self, config: GLIEDConfig):
        super().__init__(config)
        self.model = GLIEDModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)  # W_c, tied to the embedding
        self.post_init()
        self.generation_config.max_new_tokens = 20
        self.generation_config.num_beams = 3

    def get_input_embeddings(self):
        return self.model.shared

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def get_encoder(self, *args, **kwargs):
        """The image side for `generate`: the encoder plus the projection of the image memories (shared weights;
        `model.model.encoder` alone gives the encoder outputs without the projections)."""
        return GLIEDGenerationEncoder(self.model.encoder, self.model.decoder)

    def get_decoder(self):
        return self.model.decoder

    def forward(
        self,
        region_features=None,
        region_mask=None,
        region_boxes=None,
        attribute_ids=None,
        attribute_mask=None,
        decoder_input_ids=None,
        labels=None,
        caption_image_index=None,
        encoder_outputs=None,
        past_key_values=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        """Returns `GLIEDCaptioningOutput`. Give `labels` (caption ids + `<eos>`, -100 = ignore) for the loss;
        `decoder_input_ids` default to the labels shifted right behind `<bos>`. With several captions per image,
        `caption_image_index` (one image index per caption row) lets the encoder, and the projection of the image
        memories for attention, run once per image."""
        output_attentions = bool(output_attentions)
        output_hidden_states = bool(output_hidden_states)
        if labels is not None and decoder_input_ids is None:
            decoder_input_ids = shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)
        if decoder_input_ids is None:
            raise ValueError("GLIEDForCaptioning.forward needs decoder_input_ids or labels (use generate() to caption)")
        if encoder_outputs is None:
            encoder_outputs = self.model.encoder(
                region_features, region_mask, region_boxes, attribute_ids, attribute_mask,
                output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            )
        if caption_image_index is not None:
            caption_image_index = caption_image_index.to(encoder_outputs.last_hidden_state.device)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = EncoderDecoderCache(DynamicCache(), DynamicCache())
        hidden, all_hidden, maps = self.model.decoder(
            decoder_input_ids, encoder_outputs, past_key_values if use_cache else None, use_cache,
            output_attentions, output_hidden_states, caption_image_index,
        )
        # y ~ p = softmax(W_c c~)
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                ignore_index=-100, label_smoothing=self.config.label_smoothing,
            )
        attention = (lambda name: maps[name]) if output_attentions else (lambda name: None)
        return GLIEDCaptioningOutput(
            loss=loss,
            logits=logits,
            past_key_values=past_key_values if use_cache else None,
            decoder_hidden_states=all_hidden,
            decoder_attentions=attention("context"),
            cross_attentions=attention("visual"),
            attribute_attentions=attention("attribute"),
            local_region_attentions=attention("local_region"),
            local_attribute_attentions=attention("local_attribute"),
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )

    @staticmethod
    def _reorder_cache(past_key_values, beam_idx):
        """Beam search keeps the beams' previous words; the image memories of the beams of one image are equal,
        so only the self-attention cache is reordered (no copy of the cross-attention keys and values)."""
        past_key_values.self_attention_cache.reorder_cache(beam_idx)
        return past_key_values

    def prepare_inputs_for_generation(
        self, decoder_input_ids, past_key_values=None, encoder_outputs=None, use_cache=None, **kwargs
    ):
        """Each step feeds only the new word when the cache holds the previous ones."""
        if past_key_values is not None and past_key_values.get_seq_length() > 0:
            decoder_input_ids = decoder_input_ids[:, past_key_values.get_seq_length():]
        return {
            "decoder_input_ids": decoder_input_ids,
            "encoder_outputs": encoder_outputs,
            "past_key_values": past_key_values,
            "use_cache": use_cache,
            "output_attentions": kwargs.get("output_attentions"),
            "output_hidden_states": kwargs.get("output_hidden_states"),
        }


__all__ = [
    "GLIEDAttention",
    "GLIEDCaptioningOutput",
    "GLIEDEncoderOutput",
    "GLIEDForCaptioning",
    "GLIEDModel",
    "GLIEDPreTrainedModel",
]
