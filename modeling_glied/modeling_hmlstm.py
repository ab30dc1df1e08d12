"""The Hierarchical Multimodal LSTM (ICCV 2017): a dense visual-semantic embedding of images, regions,
sentences and phrases in one joint space (the seed article `hm-lstm-iccv2017-article.txt`).

The text side is a tree: the leaves are words, the intermediate nodes are phrases, the root is the sentence.
The image side mirrors it: the regions are the intermediate nodes, the root is the image. Training ranks the
true image-sentence pairs above the other pairs of the batch and, without region labels, each phrase's image
(scored through the phrase's best-matching region) above the other images.

Choices the seed leaves open (documented for the model card):
- words: a bidirectional LSTM over the sentence, `h_t = [LSTM_fwd(x_1..x_t); LSTM_bwd(x_t..x_T)]`.
- phrase node: a unidirectional LSTM over the word states of its span, its last hidden state.
- root: an LSTM over the children of the root in text order: each phrase node at the position of its first word
  and every word that no phrase covers (with no phrase: over the words); its last hidden state. Phrases must not
  overlap.
- regions: a linear projection of the region feature plus a linear projection of its box geometry.
- image: attention pooling over its regions (order-free), `v = W_v sum_i a_i u_i`, `a = softmax_i(w . tanh(U u_i))`.
- every embedding is L2-normalised; similarities are cosines.
- losses are means over the queries of the batch (sum or max over each query's negatives).

Config and model live in this one file, which imports torch, transformers and the config checks only, so that a
saved checkpoint carries it (and `config_checks.py`) and loads with `trust_remote_code=True` where glied is not
installed.
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from transformers import PreTrainedModel
from transformers.modeling_outputs import ModelOutput

try:  # transformers >= 5
    from transformers import PreTrainedConfig
except ImportError:  # transformers 4.x
    from transformers import PretrainedConfig as PreTrainedConfig

from .config_checks import (check_fractions, check_non_negative_numbers, check_positive_ints, check_positive_numbers,
                            check_switches, check_token_ids)


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------
class HMLSTMConfig(PreTrainedConfig):
    r"""
    Configuration of [`HMLSTMModel`].

    Args:
        vocab_size: text vocabulary size, special tokens included.
        word_embedding_size: width of the word vectors (300 as word2vec / GloVe).
        hidden_size: width of every LSTM state (the word-level LSTM is bidirectional, `hidden_size // 2` each way).
        embedding_size: width of the joint space of images, regions, sentences and phrases.
        region_feature_size: width of the input region features (2048 for bottom-up features).
        region_box_size: box geometry read from `region_boxes` (x1 y1 x2 y2 in [0, 1]): 0 ignores boxes,
            4 the corners, 5 the corners and the relative area.
        margin: the hinge margin `m` of the ranking losses.
        hardest_negative: False sums the hinge over all negatives (VSE); True keeps the hardest one (VSE++).
        phrase_loss_weight: weight of the phrase-region ranking loss.
        hierarchical: True is the full model; False the flat baseline (sentence over words, image over regions,
            only the image-sentence loss; phrases are ignored).
        pad_token_id: id of `<pad>`.
        dropout: dropout on word vectors and region features during training.
        initializer_range: standard deviation of the normal initialisation of linear and embedding weights.
    """

    model_type = "hmlstm"

    def __init__(
        self,
        vocab_size=10000,
        word_embedding_size=300,
        hidden_size=1024,
        embedding_size=1024,
        region_feature_size=2048,
        region_box_size=5,
        margin=0.2,
        hardest_negative=False,
        phrase_loss_weight=1.0,
        hierarchical=True,
        pad_token_id=0,
        dropout=0.0,
        initializer_range=0.02,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.word_embedding_size = word_embedding_size
        self.hidden_size = hidden_size
        self.embedding_size = embedding_size
        self.region_feature_size = region_feature_size
        self.region_box_size = region_box_size
        self.margin = margin
        self.hardest_negative = hardest_negative
        self.phrase_loss_weight = phrase_loss_weight
        self.hierarchical = hierarchical
        self.dropout = dropout
        self.initializer_range = initializer_range
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.pad_token_id = pad_token_id
        self._validate_hmlstm()

    def _validate_hmlstm(self):
        check_positive_ints(self, "vocab_size", "word_embedding_size", "hidden_size", "embedding_size",
                            "region_feature_size")
        if self.hidden_size % 2:
            raise ValueError(
                f"HMLSTMConfig.hidden_size must be even (the word LSTM is bidirectional, hidden_size // 2 each way), "
                f"got {self.hidden_size}"
            )
        if self.region_box_size not in (0, 4, 5) or isinstance(self.region_box_size, bool):
            raise ValueError(
                f"HMLSTMConfig.region_box_size must be 0 (no boxes), 4 (corners) or 5 (corners and area), "
                f"got {self.region_box_size!r}"
            )
        check_non_negative_numbers(self, "margin", "phrase_loss_weight")
        check_switches(self, "hardest_negative", "hierarchical")
        check_fractions(self, "dropout")
        check_positive_numbers(self, "initializer_range")
        check_token_ids(self, "pad_token_id")


# ----------------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class HMLSTMOutput(ModelOutput):
    """Joint-space embeddings, their similarities and the ranking losses.

    loss: `sentence_loss + phrase_loss_weight * phrase_loss` (when `return_loss`).
    sentence_loss: bidirectional image-sentence hinge loss.
    phrase_loss: bidirectional phrase-image hinge loss (0 with no phrase or in the flat model).
    image_sentence_similarity: (B, S), `[i, j]` = cos(image i, sentence j).
    phrase_image_similarity: (S, P, B), `[b, p, k]` = max over the valid regions of image k of cos(phrase p of
        sentence b, region); 0 at padded phrases. None in the flat model or without phrases.
    image_embeds (B, E), region_embeds (B, N, E), sentence_embeds (S, E), phrase_embeds (S, P, E) or None:
        L2-normalised, zeros at padding.
    """

    loss: Optional[torch.FloatTensor] = None
    sentence_loss: Optional[torch.FloatTensor] = None
    phrase_loss: Optional[torch.FloatTensor] = None
    image_sentence_similarity: Optional[torch.FloatTensor] = None
    phrase_image_similarity: Optional[torch.FloatTensor] = None
    image_embeds: Optional[torch.FloatTensor] = None
    region_embeds: Optional[torch.FloatTensor] = None
    sentence_embeds: Optional[torch.FloatTensor] = None
    phrase_embeds: Optional[torch.FloatTensor] = None


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------
def _last_state(lstm, inputs, lengths):
    """Last hidden state (of each direction, concatenated) of `lstm` over `inputs` (B, L, D), `lengths` (B,) >= 1."""
    packed = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
    _, (h_n, _) = lstm(packed)
    if lstm.bidirectional:
        return torch.cat([h_n[-2], h_n[-1]], dim=-1)
    return h_n[-1]


def hinge_ranking(scores, positive, negative, margin, hardest):
    """Mean over queries of `agg_n [m - s(q, +) + s(q, n)]_+`, agg = max (hardest) or sum.

    scores: (Q, C) query-candidate scores; positive: (Q,) the positive score of each query;
    negative: (Q, C) bool, the candidates that are negatives of each query. 0 when there is no query.
    """
    if scores.shape[0] == 0:
        return scores.sum() * 0.0
    costs = (margin - positive.unsqueeze(1) + scores).clamp(min=0).masked_fill(~negative, 0.0)
    per_query = costs.max(dim=1).values if hardest else costs.sum(dim=1)
    return per_query.mean()


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------
class HMLSTMPreTrainedModel(PreTrainedModel):
    config_class = HMLSTMConfig
    base_model_prefix = "hmlstm"
    main_input_name = "input_ids"


class HMLSTMModel(HMLSTMPreTrainedModel):
    """Hierarchical multimodal LSTM: images, regions, sentences and phrases in one joint space.

    Usage:
        model = HMLSTMModel(HMLSTMConfig(vocab_size=len(vocab)))
        out = model(input_ids, attention_mask, region_features, region_mask, phrase_spans=spans, phrase_mask=pm)
        out.loss.backward()
        images, regions = model.embed_images(region_features, region_mask)
        sentences, phrases = model.embed_sentences(input_ids, attention_mask, spans, pm)
    """

    def __init__(self, config: HMLSTMConfig):
        super().__init__(config)
        hidden, joint = config.hidden_size, config.embedding_size
        # text side
        self.word_embeddings = nn.Embedding(config.vocab_size, config.word_embedding_size, padding_idx=config.pad_token_id)
        self.word_lstm = nn.LSTM(config.word_embedding_size, hidden // 2, batch_first=True, bidirectional=True)
        if config.hierarchical:
            self.phrase_lstm = nn.LSTM(hidden, hidden, batch_first=True)
            self.phrase_projection = nn.Linear(hidden, joint)
        self.sentence_lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.sentence_projection = nn.Linear(hidden, joint)
        # image side
        self.region_projection = nn.Linear(config.region_feature_size, joint)
        self.box_projection = nn.Linear(config.region_box_size, joint) if config.region_box_size else None
        self.region_attention = nn.Sequential(nn.Linear(joint, joint), nn.Tanh(), nn.Linear(joint, 1))
        self.image_projection = nn.Linear(joint, joint)
        self.dropout = nn.Dropout(config.dropout)
        self.post_init()

    # ------------------------------------------------------------------------------------------------------------
    # image side
    # ------------------------------------------------------------------------------------------------------------
    def _check_regions(self, region_features, region_mask, region_boxes):
        if region_features is None or region_features.dim() != 3:
            shape = None if region_features is None else tuple(region_features.shape)
            raise ValueError(f"region_features must be a 3-D tensor (batch, regions, features), got shape {shape}")
        if region_features.shape[-1] != self.config.region_feature_size:
            raise ValueError(
                f"region_features have width {region_features.shape[-1]}, the model expects "
                f"region_feature_size={self.config.region_feature_size}"
            )
        if region_mask is not None and tuple(region_mask.shape) != tuple(region_features.shape[:2]):
            raise ValueError(f"region_mask has shape {tuple(region_mask.shape)}, expected {tuple(region_features.shape[:2])}")
        if region_boxes is not None and tuple(region_boxes.shape) != (*region_features.shape[:2], 4):
            raise ValueError(
                f"region_boxes has shape {tuple(region_boxes.shape)}, expected {(*region_features.shape[:2], 4)}"
            )

    def _region_states(self, region_features, region_boxes):
        # u_i = W_r x_i + W_b g(box_i)
        states = self.region_projection(self.dropout(region_features))
        if region_boxes is not None and self.box_projection is not None:
            boxes = region_boxes.to(states.dtype)
            if self.config.region_box_size == 5:
                area = (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
                boxes = torch.cat([boxes, area.unsqueeze(-1)], dim=-1)
            states = states + self.box_projection(boxes)
        return states

    def embed_images(self, region_features, region_mask=None, region_boxes=None):
        r"""
        Args:
            region_features: (B, N, F) region features; region_mask: (B, N) 1 valid / 0 padding (all valid when
                omitted; every image needs a valid region); region_boxes: (B, N, 4) optional normalised boxes.

        Returns:
            `(images, regions)`: (B, E) and (B, N, E), L2-normalised; padded regions are zero vectors.
        """
        self._check_regions(region_features, region_mask, region_boxes)
        batch, count = region_features.shape[:2]
        if region_mask is None:
            valid = torch.ones(batch, count, dtype=torch.bool, device=region_features.device)
        else:
            valid = region_mask.to(device=region_features.device, dtype=torch.bool)
        if count == 0 or not bool(valid.any(dim=1).all()):
            raise ValueError("every image needs at least one valid region (region_mask has a row of zeros)")
        states = self._region_states(region_features, region_boxes)
        # a = softmax_i(w . tanh(U u_i)) over the valid regions
        logits = self.region_attention(states).squeeze(-1).masked_fill(~valid, float("-inf"))
        weights = torch.softmax(logits, dim=1).masked_fill(~valid, 0.0)
        # v = W_v sum_i a_i u_i
        images = self.image_projection(torch.einsum("bn,bne->be", weights, states.masked_fill(~valid.unsqueeze(-1), 0.0)))
        regions = F.normalize(states, dim=-1).masked_fill(~valid.unsqueeze(-1), 0.0)
        return F.normalize(images, dim=-1), regions

    # ------------------------------------------------------------------------------------------------------------
    # text side
    # ------------------------------------------------------------------------------------------------------------
    def _text_mask(self, input_ids, attention_mask):
        if input_ids is None or input_ids.dim() != 2:
            shape = None if input_ids is None else tuple(input_ids.shape)
            raise ValueError(f"input_ids must be a 2-D tensor (batch, tokens), got shape {shape}")
        if attention_mask is None:
            mask = input_ids != self.config.pad_token_id
        else:
            if tuple(attention_mask.shape) != tuple(input_ids.shape):
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}, expected {tuple(input_ids.shape)}"
                )
            mask = attention_mask.to(device=input_ids.device, dtype=torch.bool)
        lengths = mask.sum(dim=1)
        if input_ids.shape[1] == 0 or bool((lengths == 0).any()):
            raise ValueError("every sentence needs at least one token (attention_mask has a row of zeros)")
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        if not torch.equal(mask, positions.unsqueeze(0) < lengths.unsqueeze(1)):
            raise ValueError("attention_mask must be right-padded: ones for the tokens, then zeros for the padding")
        return mask, lengths

    def _check_phrases(self, phrase_spans, phrase_mask, lengths):
        batch = lengths.shape[0]
        if phrase_spans.dim() != 3 or phrase_spans.shape[0] != batch or phrase_spans.shape[2] != 2:
            raise ValueError(f"phrase_spans must have shape (batch={batch}, phrases, 2), got {tuple(phrase_spans.shape)}")
        if phrase_mask is None:
            phrase_mask = torch.ones(phrase_spans.shape[:2], dtype=torch.bool, device=phrase_spans.device)
        elif tuple(phrase_mask.shape) != tuple(phrase_spans.shape[:2]):
            raise ValueError(f"phrase_mask has shape {tuple(phrase_mask.shape)}, expected {tuple(phrase_spans.shape[:2])}")
        valid = phrase_mask.to(device=phrase_spans.device, dtype=torch.bool)
        starts, ends = phrase_spans[..., 0].long(), phrase_spans[..., 1].long()
        bad = valid & ((starts < 0) | (ends <= starts) | (ends > lengths.to(starts.device).unsqueeze(1)))
        if bool(bad.any()):
            b, p = bad.nonzero()[0].tolist()
            raise ValueError(
                f"phrase {p} of sentence {b} has span {phrase_spans[b, p].tolist()}: spans are [start, end) with "
                f"0 <= start < end <= sentence length ({int(lengths[b])})"
            )
        return starts, ends, valid

    def embed_sentences(self, input_ids, attention_mask=None, phrase_spans=None, phrase_mask=None):
        r"""
        Args:
            input_ids: (B, T) token ids; attention_mask: (B, T), right-padded (`input_ids != pad_token_id` when
                omitted); phrase_spans: (B, P, 2) long, `[start, end)` token indices of non-overlapping phrases;
                phrase_mask: (B, P) 1 valid / 0 padding (all valid when omitted). P may be 0.

        Returns:
            `(sentences, phrases)`: (B, E) and (B, P, E), L2-normalised, zeros at padded phrases; `phrases` is None
            without `phrase_spans` and in the flat model (which ignores phrases).
        """
        mask, lengths = self._text_mask(input_ids, attention_mask)
        words = self.dropout(self.word_embeddings(input_ids))
        # h_t = [LSTM_fwd(x_1..x_t); LSTM_bwd(x_t..x_T)]
        packed = pack_padded_sequence(words, lengths.cpu(), batch_first=True, enforce_sorted=False)
        word_states, _ = self.word_lstm(packed)
        word_states, _ = nn.utils.rnn.pad_packed_sequence(word_states, batch_first=True, total_length=input_ids.shape[1])
        batch, tokens, hidden = word_states.shape
        device = word_states.device

        children, child_mask, phrases = word_states, mask, None
        if self.config.hierarchical and phrase_spans is not None:
            phrase_spans = phrase_spans.to(device)
            starts, ends, valid = self._check_phrases(phrase_spans, phrase_mask, lengths)
            count = phrase_spans.shape[1]
            phrase_nodes = word_states.new_zeros(batch, count, hidden)
            if bool(valid.any()):
                b, p = valid.nonzero(as_tuple=True)
                span_lengths = ends[b, p] - starts[b, p]
                offsets = torch.arange(int(span_lengths.max()), device=device)
                positions = (starts[b, p].unsqueeze(1) + offsets).clamp(max=tokens - 1)
                # phrase node: n_p = last state of LSTM_p(h_s .. h_{e-1})
                nodes = _last_state(self.phrase_lstm, word_states[b.unsqueeze(1), positions], span_lengths)
                phrase_nodes = phrase_nodes.index_put((b, p), nodes)
            # phrase embedding: p = normalize(W_p n_p)
            phrases = F.normalize(self.phrase_projection(phrase_nodes), dim=-1).masked_fill(~valid.unsqueeze(-1), 0.0)
            if count:
                # root children in text order: a phrase node at its first word, every word no phrase covers
                positions = torch.arange(tokens, device=device)
                inside = valid.unsqueeze(-1) & (positions >= starts.unsqueeze(-1)) & (positions < ends.unsqueeze(-1))
                if bool((inside.sum(dim=1) > 1).any()):
                    b, t = (inside.sum(dim=1) > 1).nonzero()[0].tolist()
                    raise ValueError(f"phrases of sentence {b} overlap at token {t}: phrase spans must not overlap")
                is_start = inside & (positions == starts.unsqueeze(-1))  # (B, P, T)
                starts_here = is_start.any(dim=1)
                start_phrase = is_start.long().argmax(dim=1)  # the phrase starting at t (where one does)
                covered = inside.any(dim=1)
                nodes_at = torch.gather(phrase_nodes, 1, start_phrase.unsqueeze(-1).expand(-1, -1, hidden))
                candidates = torch.where(starts_here.unsqueeze(-1), nodes_at, word_states)
                keep = starts_here | (mask & ~covered)
                order = torch.sort((~keep).long(), dim=1, stable=True).indices  # kept children first, text order kept
                children = torch.gather(candidates, 1, order.unsqueeze(-1).expand(-1, -1, hidden))
                child_mask = torch.gather(keep, 1, order)
        # sentence: s = normalize(W_s LSTM_root(children)_last)
        root = _last_state(self.sentence_lstm, children, child_mask.sum(dim=1))
        sentences = F.normalize(self.sentence_projection(root), dim=-1)
        return sentences, phrases

    # ------------------------------------------------------------------------------------------------------------
    # losses
    # ------------------------------------------------------------------------------------------------------------
    def phrase_image_similarity(self, phrases, regions, region_mask=None):
        """`[b, p, k]` = max over the valid regions of image k of cos(phrase p of sentence b, region): (S, P, B)."""
        # s(p, I_k) = max_i cos(p, r_i^k)
        scores = torch.einsum("bpe,kne->bpkn", phrases, regions)
        if region_mask is not None:
            invalid = ~region_mask.to(device=scores.device, dtype=torch.bool)
            scores = scores.masked_fill(invalid[None, None], float("-inf"))
        return scores.max(dim=-1).values

    def ranking_losses(self, image_sentence, phrase_image=None, phrase_mask=None, sentence_image_index=None):
        r"""
        The ranking losses from the similarity matrices: `image_sentence` (B, S) and `phrase_image` (S, P, B).

        Sentence s describes image `i(s) = sentence_image_index[s]` (default: s, with S = B); every true pair
        (i(s), s) is a query in both directions, its negatives the other images and the sentences of the other
        images: `mean_s agg_{k != i(s)} [m - S_{i(s)s} + S_{ks}]_+ + mean_s agg_{s': i(s') != i(s)}
        [m - S_{i(s)s} + S_{i(s)s'}]_+` (image search, then image annotation). Phrase term, over the valid phrases
        q of sentence b(q): `mean_q agg_{k != i(b(q))} [m - s(q, i(b(q))) + s(q, k)]_+ + mean_q agg_{q': i(b(q'))
        != i(b(q))} [m - s(q, i(b(q))) + s(q', i(b(q)))]_+`. agg is sum, or max with `hardest_negative`.

        Returns `(sentence_loss, phrase_loss)`; phrase_loss is 0 without phrases.
        """
        margin, hardest = float(self.config.margin), self.config.hardest_negative
        images, sentences = image_sentence.shape
        device = image_sentence.device
        owner = self._sentence_images(sentence_image_index, images, sentences, device)
        candidates = torch.arange(images, device=device)
        positive = image_sentence[owner, torch.arange(sentences, device=device)]
        other_image = owner.unsqueeze(1) != candidates  # (S, B)
        other_sentence = owner.unsqueeze(1) != owner.unsqueeze(0)  # (S, S)
        # search: sentence s against every image; annotation: the image of s against every sentence
        sentence_loss = hinge_ranking(image_sentence.t(), positive, other_image, margin, hardest) + hinge_ranking(
            image_sentence[owner], positive, other_sentence, margin, hardest
        )
        if phrase_image is None or phrase_image.shape[1] == 0:
            return sentence_loss, image_sentence.sum() * 0.0
        if phrase_mask is None:
            phrase_mask = torch.ones(phrase_image.shape[:2], dtype=torch.bool, device=phrase_image.device)
        b, p = phrase_mask.to(device=phrase_image.device, dtype=torch.bool).nonzero(as_tuple=True)
        image_of = owner[b]  # the true image of every valid phrase q
        scores = phrase_image[b, p]  # (Q, B): valid phrase q against every image
        positive = scores.gather(1, image_of.unsqueeze(1)).squeeze(1)
        to_images = hinge_ranking(scores, positive, image_of.unsqueeze(1) != candidates, margin, hardest)
        # the true image of q against the phrases q' of the other images' sentences: s(q', i(b(q)))
        rival_phrases = scores[:, image_of].t()  # [q, q'] = s(q', i(b(q)))
        to_phrases = hinge_ranking(rival_phrases, positive, image_of.unsqueeze(1) != image_of.unsqueeze(0), margin,
                                   hardest)
        return sentence_loss, to_images + to_phrases

    @staticmethod
    def _sentence_images(sentence_image_index, images, sentences, device):
        """The image index of every sentence, validated: arange when omitted (then sentences must equal images)."""
        if sentence_image_index is None:
            if images != sentences:
                raise ValueError(
                    f"{sentences} sentences and {images} images: pair i is image i with sentence i unless "
                    f"sentence_image_index says which image each sentence describes"
                )
            return torch.arange(sentences, device=device)
        owner = torch.as_tensor(sentence_image_index, device=device)
        if owner.shape != (sentences,) or owner.dtype.is_floating_point or owner.dtype == torch.bool:
            raise ValueError(
                f"sentence_image_index must be an integer tensor of shape ({sentences},) (one image per sentence), "
                f"got {tuple(owner.shape)} {owner.dtype}"
            )
        owner = owner.long()
        if sentences and (int(owner.min()) < 0 or int(owner.max()) >= images):
            raise ValueError(f"sentence_image_index values must lie in [0, {images}) (the image rows), got "
                             f"[{int(owner.min())}, {int(owner.max())}]")
        return owner

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        region_features=None,
        region_mask=None,
        region_boxes=None,
        phrase_spans=None,
        phrase_mask=None,
        sentence_image_index=None,
        return_loss=True,
        return_dict=None,
    ):
        r"""
        Embeds B images and S sentences and ranks the true pairs above the others.

        Args: as [`embed_images`] and [`embed_sentences`]; `sentence_image_index` (S,): the image row each sentence
        describes (several sentences may share an image; default: sentence i describes image i, S = B);
        `return_loss` computes the losses.

        Returns:
            [`HMLSTMOutput`].
        """
        if input_ids is None or region_features is None:
            raise ValueError("HMLSTMModel.forward needs both input_ids and region_features; embed one side with "
                             "embed_sentences or embed_images")
        self._sentence_images(sentence_image_index, region_features.shape[0], input_ids.shape[0], input_ids.device)
        images, regions = self.embed_images(region_features, region_mask, region_boxes)
        sentences, phrases = self.embed_sentences(input_ids, attention_mask, phrase_spans, phrase_mask)
        # S_ij = cos(image i, sentence j)
        image_sentence = images @ sentences.t()
        phrase_image = None
        if phrases is not None:
            phrase_image = self.phrase_image_similarity(phrases, regions, region_mask)
            if phrase_mask is not None:
                phrase_image = phrase_image.masked_fill(~phrase_mask.to(phrase_image.device).bool().unsqueeze(-1), 0.0)
        loss = sentence_loss = phrase_loss = None
        if return_loss:
            sentence_loss, phrase_loss = self.ranking_losses(image_sentence, phrase_image, phrase_mask,
                                                             sentence_image_index)
            # L = L_sentence + lambda L_phrase
            loss = sentence_loss + self.config.phrase_loss_weight * phrase_loss
        output = HMLSTMOutput(
            loss=loss,
            sentence_loss=sentence_loss,
            phrase_loss=phrase_loss,
            image_sentence_similarity=image_sentence,
            phrase_image_similarity=phrase_image,
            image_embeds=images,
            region_embeds=regions,
            sentence_embeds=sentences,
            phrase_embeds=phrases,
        )
        if return_dict is False:
            return output.to_tuple()
        return output


__all__ = ["HMLSTMConfig", "HMLSTMModel", "HMLSTMOutput", "HMLSTMPreTrainedModel"]
