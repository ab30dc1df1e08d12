"""Caption a data set with a trained model and score it as the COCO caption benchmark does."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .captioning_data import CaptioningCollator, model_inputs
from .metrics import evaluate_captions


@torch.inference_mode()
def generate_captions(model, processor, dataset, batch_size=50, num_beams=3, max_new_tokens=20, progress=True,
                      description="captioning", reranker=None, rerank_candidates=None, rerank_beam_weight=None,
                      **generate_kwargs) -> dict[str, str]:
    """`{image_id: caption}` for every image of a `CaptioningDataset`, by `model.generate` (beam search by default).

    reranker: a `BeamReranker` (`processing.reranking`): the caption is then the best of the `rerank_candidates`
    best beams (default: the reranker's `num_candidates`; `max(num_beams, K)` beams) under
    `cos(image, caption) + rerank_beam_weight * beam_score` (default weight: the reranker's `beam_weight`).
    """
    if reranker is None and (rerank_candidates is not None or rerank_beam_weight is not None):
        raise ValueError("rerank_candidates and rerank_beam_weight need a reranker (a BeamReranker)")
    if reranker is not None:
        reranker.check_captioner(processor)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         collate_fn=CaptioningCollator(processor, with_captions=False))
    was_training = model.training
    model.eval()
    predictions = {}
    for batch in tqdm(loader, desc=description, disable=not progress, leave=False):
        inputs = model_inputs(batch, model.device)
        if reranker is None:
            ids = model.generate(**inputs, num_beams=num_beams, max_new_tokens=max_new_tokens, **generate_kwargs)
            captions = processor.batch_decode(ids, skip_special_tokens=True)
        else:
            captions = reranker.generate(model, processor, inputs, num_candidates=rerank_candidates,
                                         beam_weight=rerank_beam_weight, num_beams=num_beams,
                                         max_new_tokens=max_new_tokens, **generate_kwargs).captions
        predictions.update(zip(batch["image_ids"], captions))
    model.train(was_training)
    return predictions


def evaluate_model(model, processor, dataset, metrics=None, **generate_kwargs):
    """Caption `dataset` and score the captions: returns `(scores, predictions)`; scores keyed "BLEU-1".."CIDEr".
    `generate_kwargs` go to `generate_captions` (batch_size, num_beams, ..., reranker, rerank_candidates, ...)."""
    predictions = generate_captions(model, processor, dataset, **generate_kwargs)
    evaluation = evaluate_captions(dataset.references(), predictions, metrics=metrics)
    return evaluation.scores, predictions


__all__ = ["evaluate_model", "generate_captions"]
