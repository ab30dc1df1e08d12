"""Re-rank GLIED's beam candidates with the retrieval model (HM-LSTM): the caption that best matches the image.

    reranker = BeamReranker.from_pretrained(HMLSTM_DIR, beam_weight=0.0, num_candidates=5)   # train_retrieval's best/
    reranked = reranker.generate(captioner, captioner_processor, inputs)   # inputs: the captioner's image tensors
    reranked.captions                   # one caption per image
    pipeline("image-to-text", model=GLIED_DIR, reranker=HMLSTM_DIR, rerank_candidates=5, rerank_beam_weight=0.0)

Steps for a batch of B images: beam search keeps `num_beams = max(num_beams, K)` beams and returns its K best
finished captions with their `sequences_scores` (the length-normalised log-probability
`sum_t log p(w_t | w_<t, I) / T ** length_penalty`, the score beam search ranks them by); the HM-LSTM embeds the
image (its own processor over the same regions the captioner read) and the K captions (in batches); the chosen
caption maximises `cos(image, caption) + beam_weight * beam_score`. Ties go to the better beam. A candidate without
a word (the empty caption) is never chosen unless every candidate is empty (then the first beam is).

Both models must read the same region features: the reranker refuses (ValueError) a captioner whose processor has
another `region_feature_size`, or another `region_extractor` description (compared with the extractor's defaults
filled in; a description on one side only is a disagreement too, since the features may come from anywhere).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from .arguments import finite_number, positive_int
from .image_regions import RegionFeatureExtractor
from .retrieval_evaluation import embed_texts, model_device_dtype, to_model
from .tokenization_glied import split_caption

DEFAULT_CANDIDATES = 5
# chosen on the quick-start validation split (CIDEr-D 318.9 at 0, falling steadily to 301.4 at 5): the candidates'
# cosines differ by ~0.005, their beam scores by ~0.05, so a weight near 1 hands the choice back to beam search
DEFAULT_BEAM_WEIGHT = 0.0
# the keys of a region extractor description that do not change the features (the width is compared on its own)
_DESCRIPTION_ONLY = ("format_version", "feature_size")


def _extractor_settings(description):
    """A region extractor description with `RegionFeatureExtractor`'s defaults filled in (None stays None)."""
    if not description:
        return None
    defaults = {name: parameter.default
                for name, parameter in inspect.signature(RegionFeatureExtractor.__init__).parameters.items()
                if parameter.default is not inspect.Parameter.empty and name != "device"}
    return {**defaults, **{k: v for k, v in dict(description).items() if k not in _DESCRIPTION_ONLY}}


def check_same_regions(captioner_processor, retrieval_processor):
    """Raise a ValueError when the two processors do not describe the same region features (width and extractor)."""
    width, other = captioner_processor.region_feature_size, retrieval_processor.region_feature_size
    if width != other:
        raise ValueError(f"the reranker's retrieval model reads region features of width {other}, the captioner's "
                         f"are {width} wide: both models must see the same region features")
    mine = _extractor_settings(getattr(captioner_processor, "region_extractor", None))
    theirs = _extractor_settings(getattr(retrieval_processor, "region_extractor", None))
    if mine == theirs:
        return
    if mine is None or theirs is None:
        missing = "the captioner's" if mine is None else "the reranker's"
        raise ValueError(
            f"the region extractors differ: {missing} processor has no region_extractor description while the other "
            f"has one ({mine or theirs}); if both models were trained on features of that extractor, set the "
            f"missing processor's region_extractor to it"
        )
    differing = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    raise ValueError(
        "the region extractors differ (" + ", ".join(f"{k}: captioner {mine.get(k)!r}, reranker {theirs.get(k)!r}"
                                                     for k in differing)
        + "): both models must see the same region features"
    )


@dataclass
class RerankedBeams:
    """The candidates of B images (K each) and the reranker's choice.

    texts: B lists of K captions, best beam first; sequences: (B, K, T) token ids; beam_scores: (B, K) the
    length-normalised beam log-probabilities; similarities: (B, K) cos(image, caption) (NaN for a caption without
    a word); scores: (B, K) `similarities + beam_weight * beam_scores` (-inf without a word); best: (B,) the
    chosen candidate of each image.
    """

    texts: list
    sequences: torch.Tensor
    beam_scores: torch.Tensor
    similarities: torch.Tensor
    scores: torch.Tensor
    best: torch.Tensor

    @property
    def captions(self) -> list[str]:
        """The chosen caption of every image."""
        return [texts[int(k)] for texts, k in zip(self.texts, self.best)]

    @property
    def best_sequences(self) -> torch.Tensor:
        """(B, T) the token ids of the chosen captions."""
        return self.sequences[torch.arange(self.sequences.shape[0]), self.best.to(self.sequences.device)]


class BeamReranker:
    r"""
    Picks, among a captioner's beam candidates, the caption the retrieval model finds closest to the image.

    Args:
        model (`HMLSTMModel`): the retrieval model (any device; it is put in eval mode).
        processor (`HMLSTMProcessor`): its processor (`check_model_config` must pass).
        beam_weight (`float`, defaults to 1.0): weight of the beam score in `cos(image, caption) + beam_weight *
            beam_score`; 0 ranks by the similarity alone, a huge weight gives plain beam search's best caption.
        num_candidates (`int`, defaults to 5): K, the candidates per image.
        batch_size (`int`, defaults to 128): captions embedded per forward pass.
    """

    def __init__(self, model, processor, beam_weight=DEFAULT_BEAM_WEIGHT, num_candidates=DEFAULT_CANDIDATES,
                 batch_size=128):
        if getattr(getattr(model, "config", None), "model_type", None) != "hmlstm":
            raise ValueError(f"the reranker needs an HMLSTMModel, got {type(model).__name__}")
        processor.check_model_config(model.config)
        self.model = model.eval()
        self.processor = processor
        self.beam_weight = finite_number(beam_weight, "beam_weight")
        self.num_candidates = positive_int(num_candidates, "num_candidates")
        self.batch_size = positive_int(batch_size, "batch_size")

    @classmethod
    def from_pretrained(cls, path, device=None, **kwargs):
        """Load the HM-LSTM and its processor from a folder (or repo id) saved by `examples/train_retrieval.py`."""
        from modeling_glied import HMLSTMModel

        from .processing_hmlstm import HMLSTMProcessor

        processor = HMLSTMProcessor.from_pretrained(str(path))
        model = HMLSTMModel.from_pretrained(str(path))
        if device is not None:
            model = model.to(device)
        return cls(model, processor, **kwargs)

    def check_captioner(self, captioner_processor):
        """Raise a ValueError unless the captioner's processor describes the same region features as ours."""
        check_same_regions(captioner_processor, self.processor)

    # -- embeddings ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def embed_images(self, region_features, region_mask=None, region_boxes=None):
        """(B, E) image embeddings of a captioner batch: the valid regions of each row go through our processor
        (its `max_regions` cut) and the HM-LSTM's `embed_images`."""
        features = region_features.detach().to("cpu", torch.float32)
        valid = (torch.ones(features.shape[:2], dtype=torch.bool) if region_mask is None
                 else region_mask.detach().to("cpu").bool())
        boxes = None if region_boxes is None else region_boxes.detach().to("cpu", torch.float32)
        inputs = self.processor(
            region_features=[features[row][valid[row]].numpy() for row in range(features.shape[0])],
            region_boxes=None if boxes is None else [boxes[row][valid[row]].numpy() for row in range(boxes.shape[0])],
            return_tensors="pt",
        )
        device, dtype = model_device_dtype(self.model)
        inputs = to_model(dict(inputs), device, dtype)
        images, _ = self.model.embed_images(inputs["region_features"], inputs["region_mask"],
                                            inputs.get("region_boxes"))
        return images.to("cpu", torch.float32)

    def embed_captions(self, texts):
        """(S, E) sentence embeddings (batches of `batch_size`); rows of captions without a word are NaN."""
        embed_size = self.model.config.embedding_size
        out = torch.full((len(texts), embed_size), float("nan"))
        rows = [row for row, text in enumerate(texts) if split_caption(text)]
        if rows:
            sentences, _ = embed_texts(self.model, self.processor, [texts[row] for row in rows],
                                       batch_size=self.batch_size)
            out[rows] = torch.from_numpy(sentences)
        return out

    # -- reranking ----------------------------------------------------------------------------------------------
    def rerank(self, texts, beam_scores, region_features, region_mask=None, region_boxes=None, beam_weight=None,
               sequences=None):
        """Choose among K candidate captions per image.

        Args:
            texts: B lists of K caption strings. beam_scores: (B, K) their beam scores (`sequences_scores`).
            region_features, region_mask, region_boxes: the captioner's image tensors (B rows).
            beam_weight: default `self.beam_weight`. sequences: (B, K, T) token ids, kept in the result.

        Returns:
            a `RerankedBeams`.
        """
        weight = self.beam_weight if beam_weight is None else finite_number(beam_weight, "beam_weight")
        beam_scores = torch.as_tensor(beam_scores, dtype=torch.float32).detach().cpu()
        count = region_features.shape[0]
        if beam_scores.ndim != 2 or beam_scores.shape[0] != count or len(texts) != count:
            raise ValueError(f"texts and beam_scores must hold K candidates for each of the {count} images, got "
                             f"{len(texts)} lists and beam_scores of shape {tuple(beam_scores.shape)}")
        if any(len(group) != beam_scores.shape[1] for group in texts):
            raise ValueError(f"every image needs {beam_scores.shape[1]} candidate captions (beam_scores' K)")
        flat = [text for group in texts for text in group]
        sentences = self.embed_captions(flat).reshape(count, beam_scores.shape[1], -1)
        images = self.embed_images(region_features, region_mask, region_boxes)
        # cos(image, caption): both embeddings are L2-normalised
        similarities = torch.einsum("be,bke->bk", images, sentences)
        # score = cos(image, caption) + beam_weight * beam_score; a caption without a word is never preferred
        scores = torch.nan_to_num(similarities + weight * beam_scores, nan=float("-inf"))
        best = scores.argmax(dim=1)  # the first (best beam) of ties, and of rows without any word
        return RerankedBeams(texts=[list(group) for group in texts], sequences=sequences, beam_scores=beam_scores,
                             similarities=similarities, scores=scores, best=best)

    @torch.no_grad()
    def generate(self, model, processor, inputs, num_candidates=None, beam_weight=None, num_beams=None,
                 **generate_kwargs):
        """Beam search with the captioner `model` and reranking: a `RerankedBeams` for the images of `inputs` (the
        captioner's tensors: `region_features`, `region_mask`, `region_boxes`?, `attribute_ids`?, ...).

        K = `num_candidates` (default `self.num_candidates`) captions per image from `max(num_beams, K)` beams
        (`num_beams` default: the model's generation config). Other generation options pass through to `generate`
        (`num_return_sequences` and `return_dict_in_generate` are the reranker's own).
        """
        taken = sorted({"num_return_sequences", "return_dict_in_generate", "output_scores"} & set(generate_kwargs))
        if taken:
            raise ValueError(f"{taken} are set by the reranker (it returns one caption per image; its candidates "
                             f"come back with return_candidates / RerankedBeams)")
        self.check_captioner(processor)
        candidates = positive_int(self.num_candidates if num_candidates is None else num_candidates,
                                   "num_candidates")
        if num_beams is None:
            num_beams = getattr(getattr(model, "generation_config", None), "num_beams", None) or 1
        beams = max(positive_int(num_beams, "num_beams"), candidates)
        output = model.generate(**inputs, num_beams=beams, num_return_sequences=candidates, output_scores=True,
                                return_dict_in_generate=True, **generate_kwargs)
        count = inputs["region_features"].shape[0]
        sequences = output.sequences.reshape(count, candidates, -1)
        scores = getattr(output, "sequences_scores", None)
        if scores is None:  # one beam and one candidate: greedy search scores nothing, and there is nothing to rank
            scores = torch.zeros(count * candidates)
        texts = processor.batch_decode(output.sequences, skip_special_tokens=True)
        texts = [texts[row * candidates:(row + 1) * candidates] for row in range(count)]
        return self.rerank(texts, scores.reshape(count, candidates), inputs["region_features"],
                           inputs.get("region_mask"), inputs.get("region_boxes"), beam_weight=beam_weight,
                           sequences=sequences)


def load_reranker(reranker, device=None, **kwargs):
    """A `BeamReranker` from itself, a folder or a repo id (None stays None)."""
    if reranker is None or isinstance(reranker, BeamReranker):
        return reranker
    if isinstance(reranker, str) or hasattr(reranker, "__fspath__"):
        return BeamReranker.from_pretrained(reranker, device=device, **kwargs)
    raise ValueError(f"reranker must be a BeamReranker, a folder or a repo id, got {type(reranker).__name__}")


__all__ = ["BeamReranker", "DEFAULT_BEAM_WEIGHT", "DEFAULT_CANDIDATES", "RerankedBeams", "check_same_regions",
           "load_reranker"]
