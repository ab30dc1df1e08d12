"""Caption a data set with a trained model and score it as the COCO caption benchmark does."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .captioning_data import CaptioningCollator, model_inputs
from .metrics import evaluate_captions


@torch.inference_mode()
def generate_captions(model, processor, dataset, batch_size=50, num_beams=3, max_new_tokens=20, progress=True,
                      description="captioning", **generate_kwargs) -> dict[str, str]:
    """`{image_id: caption}` for every image of a `CaptioningDataset`, by `model.generate` (beam search by default)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         collate_fn=CaptioningCollator(processor, with_captions=False))
    was_training = model.training
    model.eval()
    predictions = {}
    for batch in tqdm(loader, desc=description, disable=not progress, leave=False):
        ids = model.generate(**model_inputs(batch, model.device), num_beams=num_beams,
                             max_new_tokens=max_new_tokens, **generate_kwargs)
        predictions.update(zip(batch["image_ids"], processor.batch_decode(ids, skip_special_tokens=True)))
    model.train(was_training)
    return predictions


def evaluate_model(model, processor, dataset, metrics=None, **generate_kwargs):
    """Caption `dataset` and score the captions: returns `(scores, predictions)`; scores keyed "BLEU-1".."CIDEr"."""
    predictions = generate_captions(model, processor, dataset, **generate_kwargs)
    evaluation = evaluate_captions(dataset.references(), predictions, metrics=metrics)
    return evaluation.scores, predictions


__all__ = ["evaluate_model", "generate_captions"]
