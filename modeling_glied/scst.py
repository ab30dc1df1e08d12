"""Self-critical sequence training (Rennie et al. 2017) for GLIED.

Sample several captions per image, reward each by CIDEr-D against the image's references, and push up the
log-probability of captions that beat a baseline: the greedy caption's reward, or the mean reward of the other
samples of the same image. The reward is any callable, e.g. `CiderD(...).reward`; this module only needs torch.
"""

from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass
class SelfCriticalOutput:
    loss: torch.Tensor
    rewards: torch.Tensor  # (images, samples)
    baseline: torch.Tensor  # (images, samples)
    sequences: torch.Tensor  # (images * samples, length), <bos> first


def caption_token_mask(sequences, eos_token_id, pad_token_id):
    """1 for the words of each caption up to and including its first `<eos>`; `<bos>` (column 0) excluded."""
    words = sequences[:, 1:]
    ended_before = (words == eos_token_id).long().cumsum(dim=1) - (words == eos_token_id).long()
    return (ended_before == 0) & (words != pad_token_id)


ENCODER_INPUTS = ("region_features", "region_mask", "region_boxes", "attribute_ids", "attribute_mask")


def sequence_log_probs(model, inputs, sequences, image_index):
    """Per-token log p(w_t | w_<t, image) of `sequences` (S, T) under teacher forcing, (S, T - 1); row s belongs to
    image `image_index[s]` of `inputs`. One forward call, so a DistributedDataParallel `model` syncs gradients."""
    logits = model(**inputs, decoder_input_ids=sequences[:, :-1], caption_image_index=image_index,
                   use_cache=False).logits
    return logits.log_softmax(dim=-1).gather(-1, sequences[:, 1:, None]).squeeze(-1)


def self_critical_loss(
    model,
    inputs: dict,
    references: Sequence[Sequence[str]],
    reward_fn: Callable[[list, list], "Sequence[float]"],
    decode_fn: Callable[[torch.Tensor], list],
    num_samples: int = 5,
    baseline: str = "mean",
    max_new_tokens: int = 16,
    unwrapped_model=None,
) -> SelfCriticalOutput:
    """The self-critical loss of one batch.

    inputs: the processor's region/attribute tensors for B images; references: B lists of reference captions;
    reward_fn(candidates, references) -> one reward per candidate, where the candidates come in contiguous groups,
    one group per image, and references holds one list of reference captions per image (`CiderD.reward` is such a
    function); decode_fn(ids) -> list of caption strings; baseline "mean" (the other samples of the image) or
    "greedy" (the reward of the greedy caption). `model` may be wrapped (DistributedDataParallel); give the bare
    model as `unwrapped_model` then, it samples the captions.
    """
    if baseline not in ("mean", "greedy"):
        raise ValueError(f"baseline must be 'mean' or 'greedy', got {baseline!r}")
    if baseline == "mean" and num_samples < 2:
        raise ValueError("the 'mean' baseline needs num_samples >= 2 (the mean of the *other* samples)")
    sampler = unwrapped_model if unwrapped_model is not None else model
    config = sampler.config
    batch = len(references)
    inputs = {k: v for k, v in inputs.items() if k in ENCODER_INPUTS}
    with torch.no_grad():
        sequences = sampler.generate(**inputs, do_sample=True, num_beams=1, num_return_sequences=num_samples,
                                     max_new_tokens=max_new_tokens, top_k=0, top_p=1.0, temperature=1.0)
    rewards = torch.as_tensor(reward_fn(decode_fn(sequences), list(references)), dtype=torch.float32)
    rewards = rewards.view(batch, num_samples)
    if baseline == "mean":
        # b_i = mean of the other samples' rewards of the same image
        base = (rewards.sum(dim=1, keepdim=True) - rewards) / (num_samples - 1)
    else:
        was_training = sampler.training
        sampler.eval()
        with torch.no_grad():
            greedy = sampler.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens)
        sampler.train(was_training)
        greedy_rewards = torch.as_tensor(reward_fn(decode_fn(greedy), list(references)), dtype=torch.float32)
        base = greedy_rewards.view(batch, 1).expand(batch, num_samples)
    device = sequences.device
    advantage = (rewards - base).to(device).reshape(-1, 1)
    image_index = torch.arange(batch, device=device).repeat_interleave(num_samples)
    token_log_probs = sequence_log_probs(model, inputs, sequences, image_index)
    mask = caption_token_mask(sequences, config.eos_token_id, config.pad_token_id).to(token_log_probs.dtype)
    # L(theta) = -(r(w^s) - b) * sum_t log p(w^s_t | w^s_<t, I, A), averaged over the sampled words
    loss = -(advantage * token_log_probs * mask).sum() / mask.sum().clamp(min=1)
    return SelfCriticalOutput(loss=loss, rewards=rewards, baseline=base, sequences=sequences)


__all__ = ["SelfCriticalOutput", "caption_token_mask", "self_critical_loss", "sequence_log_probs"]
