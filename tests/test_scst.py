import pytest
import torch

from modeling_glied import GLIEDConfig, GLIEDForCaptioning
from modeling_glied.scst import caption_token_mask, self_critical_loss, sequence_log_probs


def tiny_model(seed=0):
    torch.manual_seed(seed)
    config = GLIEDConfig(vocab_size=12, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                         region_feature_size=16)
    return GLIEDForCaptioning(config)


def decode(ids):
    return [" ".join(str(t) for t in row[1:].tolist() if t not in (0, 1, 2)) for row in ids]


def count_fives(candidates, references):
    return [c.split().count("5") / (1 + len(c.split())) for c in candidates]


INPUTS = dict(region_features=torch.randn(4, 5, 16, generator=torch.Generator().manual_seed(0)),
              attribute_ids=torch.tensor([[4, 5, 6]] * 4))


def test_caption_token_mask_stops_after_the_first_eos():
    sequences = torch.tensor([[1, 5, 6, 2, 0, 0], [1, 5, 2, 7, 2, 0], [1, 4, 4, 4, 4, 4]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(caption_token_mask(sequences, eos_token_id=2, pad_token_id=0), expected)


def test_mean_baseline_is_the_mean_of_the_other_samples():
    model = tiny_model()
    out = self_critical_loss(model, INPUTS, [["5 5"]] * 4, count_fives, decode, num_samples=4, baseline="mean",
                             max_new_tokens=5)
    r = out.rewards
    for i in range(4):
        for j in range(4):
            others = torch.cat([r[i, :j], r[i, j + 1:]])
            assert out.baseline[i, j].item() == pytest.approx(others.mean().item(), abs=1e-6)
    assert out.sequences.shape[0] == 16


def test_loss_is_the_advantage_weighted_log_likelihood():
    model = tiny_model().eval()
    torch.manual_seed(1)
    out = self_critical_loss(model, INPUTS, [["5"]] * 4, count_fives, decode, num_samples=3, baseline="mean",
                             max_new_tokens=5)
    repeated = {k: v.repeat_interleave(3, 0) for k, v in INPUTS.items()}
    logits = model(**repeated, decoder_input_ids=out.sequences[:, :-1]).logits
    log_probs = logits.log_softmax(-1).gather(-1, out.sequences[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(log_probs, sequence_log_probs(model, INPUTS, out.sequences,
                                                             torch.arange(4).repeat_interleave(3)))
    mask = caption_token_mask(out.sequences, 2, 0).float()
    advantage = (out.rewards - out.baseline).reshape(-1, 1)
    expected = -(advantage * log_probs * mask).sum() / mask.sum()
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_greedy_baseline_uses_the_greedy_captions_reward():
    model = tiny_model()
    out = self_critical_loss(model, INPUTS, [["5"]] * 4, count_fives, decode, num_samples=2, baseline="greedy",
                             max_new_tokens=5)
    model.eval()
    greedy = model.generate(**INPUTS, num_beams=1, do_sample=False, max_new_tokens=5)
    expected = torch.tensor(count_fives(decode(greedy), None))
    assert torch.allclose(out.baseline[:, 0], expected) and torch.allclose(out.baseline[:, 1], expected)


def test_bad_baseline_settings_are_refused():
    with pytest.raises(ValueError, match="baseline must be"):
        self_critical_loss(tiny_model(), INPUTS, [["5"]] * 4, count_fives, decode, baseline="max")
    with pytest.raises(ValueError, match="num_samples >= 2"):
        self_critical_loss(tiny_model(), INPUTS, [["5"]] * 4, count_fives, decode, num_samples=1)


def test_self_critical_training_raises_the_reward():
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.manual_seed(0)
    first = []
    last = []
    for step in range(60):
        out = self_critical_loss(model, INPUTS, [["5 5"]] * 4, count_fives, decode, num_samples=5,
                                 max_new_tokens=6)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        (first if step < 10 else last if step >= 50 else []).append(out.rewards.mean().item())
    assert sum(last) / len(last) > 2 * sum(first) / len(first)
