"""Self-critical sequence training (Rennie et al. 2017) for GLIED.

Sample several captions per image, reward each by CIDEr-D against the image's references, and push up the
log-probability of captions that beat a baseline: the greedy caption's reward, or the mean reward of the other
samples of the same image. The reward is any callable, e.g. `CiderD(...).reward`; this module only needs torch.
"""

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .modeling_glied import select_images


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


def sequence_log_probs(model, encoder_outputs, sequences):
    """Per-token log p(w_t | w_<t, image) of `sequences` (B, T) under teacher forcing, (B, T - 1)."""
    logits = model(encoder_outputs=encoder_outputs, decoder_input_ids=sequences[:, :-1], use_cache=False).logits
    return logits.log_softmax(dim=-1).gather(-1, sequences[:, 1:, None]).squeeze(-1)


def expand_encoder_outputs(encoder_outputs, times):
    """Repeat every image's encoder outputs `times` times (sample i of image b sits at row b * times + i)."""
    batch = encoder_outputs.last_hidden_state.shape[0]
    return select_images(encoder_outputs, torch.arange(batch).repeat_interleave(times))


def self_critical_loss(
    model,
    inputs: dict,
    references: Sequence[Sequence[str]],
    reward_fn: Callable[[list, list], "Sequence[float]"],
    decode_fn: Callable[[torch.Tensor], list],
    num_samples: int = 5,
    baseline: str = "mean",
    max_new_tokens: int = 16,
) -> SelfCriticalOutput:
    """The self-critical loss of one batch.

    inputs: the processor's region/attribute tensors for B images; references: B lists of reference captions;
    reward_fn(candidates, references) -> one reward per candidate (candidates: list of str, references: list of
    the matching reference lists); decode_fn(ids) -> list of caption strings; baseline "mean" (the other samples
    of the image) or "greedy" (the reward of the greedy caption).
    """
    if baseline not in ("mean", "greedy"):
        raise ValueError(f"baseline must be 'mean' or 'greedy', got {baseline!r}")
    if baseline == "mean" and num_samples < 2:
        raise ValueError("the 'mean' baseline needs num_samples >= 2 (the mean of the *other* samples)")
    config = model.config
    batch = len(references)
    encoder_inputs = {k: v for k, v in inputs.items() if k in
                      ("region_features", "region_mask", "region_boxes", "attribute_ids", "attribute_mask")}
    encoder_outputs = model.get_encoder()(**encoder_inputs)
    with torch.no_grad():
        sequences = model.generate(
            encoder_outputs=expand_encoder_outputs(encoder_outputs, 1), do_sample=True, num_beams=1,
            num_return_sequences=num_samples, max_new_tokens=max_new_tokens, top_k=0, top_p=1.0, temperature=1.0,
        )
    repeated_refs = [refs for refs in references for _ in range(num_samples)]
    rewards = torch.as_tensor(reward_fn(decode_fn(sequences), repeated_refs), dtype=torch.float32)
    rewards = rewards.view(batch, num_samples)
    if baseline == "mean":
        # b_i = mean of the other samples' rewards of the same image
        base = (rewards.sum(dim=1, keepdim=True) - rewards) / (num_samples - 1)
    else:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            greedy = model.generate(encoder_outputs=expand_encoder_outputs(encoder_outputs, 1), do_sample=False,
                                    num_beams=1, max_new_tokens=max_new_tokens)
        model.train(was_training)
        greedy_rewards = torch.as_tensor(reward_fn(decode_fn(greedy), list(references)), dtype=torch.float32)
        base = greedy_rewards.view(batch, 1).expand(batch, num_samples)
    advantage = (rewards - base).to(encoder_outputs.last_hidden_state.device).reshape(-1, 1)
    token_log_probs = sequence_log_probs(model, expand_encoder_outputs(encoder_outputs, num_samples), sequences)
    mask = caption_token_mask(sequences, config.eos_token_id, config.pad_token_id).to(token_log_probs.dtype)
    # L(theta) = -(r(w^s) - b) * sum_t log p(w^s_t | w^s_<t, I, A), averaged over the sampled words
    loss = -(advantage * token_log_probs * mask).sum() / mask.sum().clamp(min=1)
    return SelfCriticalOutput(loss=loss, rewards=rewards, baseline=base, sequences=sequences)


__all__ = ["SelfCriticalOutput", "caption_token_mask", "self_critical_loss", "sequence_log_probs"]
