import itertools
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import transformers
from modeling_glied import GLIEDConfig, GLIEDForCaptioning
from without_glied import WITHOUT_GLIED

SWITCHES = list(itertools.product([False, True], repeat=3))


def tiny_config(**kwargs):
    values = dict(vocab_size=40, hidden_size=32, num_attention_heads=4, intermediate_size=64, region_feature_size=16,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    values.update(kwargs)
    return GLIEDConfig(**values)


def switches_config(switches, **kwargs):
    visual, attribute, local = switches
    return tiny_config(global_visual_distilling=visual, global_attribute_distilling=attribute,
                       local_distilling=local, **kwargs)


def make_inputs(batch=3, regions=5, attributes=4, seed=0, boxes=False):
    g = torch.Generator().manual_seed(seed)
    inputs = dict(
        region_features=torch.randn(batch, regions, 16, generator=g),
        region_mask=torch.ones(batch, regions, dtype=torch.long),
        attribute_ids=torch.randint(4, 40, (batch, attributes), generator=g),
        attribute_mask=torch.ones(batch, attributes, dtype=torch.long),
    )
    if boxes:
        corners = torch.rand(batch, regions, 2, 2, generator=g).sort(dim=2).values
        inputs["region_boxes"] = corners.permute(0, 1, 3, 2).reshape(batch, regions, 4)
    return inputs


def model_for(config, seed=0):
    torch.manual_seed(seed)
    return GLIEDForCaptioning(config).eval()


def test_parameter_counts_match_the_paper_within_ten_percent():
    counts = {}
    for name, config in (("GLIED", GLIEDConfig()), ("Base", GLIEDConfig.base())):
        counts[name] = sum(p.numel() for p in GLIEDForCaptioning(config).parameters())
    assert abs(counts["GLIED"] / 18.3e6 - 1) < 0.10, counts
    assert abs(counts["Base"] / 12.3e6 - 1) < 0.10, counts
    assert counts["GLIED"] > counts["Base"]


@pytest.mark.parametrize("switches", SWITCHES)
def test_each_switch_adds_its_part(switches):
    visual, attribute, local = switches
    names = {name for name, _ in model_for(switches_config(switches)).named_parameters()}
    assert any("encoder.layers.0.attention" in n for n in names) == visual
    assert any("attribute_distilling." in n for n in names) == attribute
    assert any("local_visual_attention" in n for n in names) == local
    assert any("semantic_attention" in n for n in names) == (not local)


@pytest.mark.parametrize("switches", SWITCHES)
def test_every_part_reaches_the_loss(switches):
    model = model_for(switches_config(switches))
    model.train()
    inputs = make_inputs(boxes=True)
    labels = torch.randint(4, 40, (3, 6))
    model(**inputs, labels=labels).loss.backward()
    for name, parameter in model.named_parameters():
        if name.endswith("shared.weight"):
            continue
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_switches_change_the_function():
    inputs, labels = make_inputs(), torch.randint(4, 40, (3, 6))
    losses = {s: model_for(switches_config(s))(**inputs, labels=labels).loss.item() for s in SWITCHES}
    assert len({round(v, 6) for v in losses.values()}) == len(SWITCHES)


@pytest.mark.parametrize("switches", SWITCHES)
def test_cached_step_by_step_logits_equal_full_forward(switches):
    model = model_for(switches_config(switches, num_hidden_layers=2))
    inputs = make_inputs()
    ids = torch.randint(4, 40, (3, 7))
    full = model(**inputs, decoder_input_ids=ids, use_cache=False).logits
    # generate's encoder projects the image memories up front; the bare encoder leaves them to the cross cache
    for encoder in (model.get_encoder(), model.model.encoder):
        past, steps = None, []
        encoder_outputs = encoder(**inputs)
        assert (encoder_outputs.memory_keys is not None) == (encoder is not model.model.encoder)
        for t in range(ids.shape[1]):
            out = model(encoder_outputs=encoder_outputs, decoder_input_ids=ids[:, t:t + 1], past_key_values=past,
                        use_cache=True)
            past = out.past_key_values
            steps.append(out.logits)
        torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("switches", [(False, False, False), (True, True, True)])
def test_padded_batch_equals_each_image_alone(switches):
    model = model_for(switches_config(switches))
    counts = [(5, 4), (2, 1), (3, 0)]  # (regions, attributes) per image; the last image has no attribute word
    g = torch.Generator().manual_seed(1)
    alone = [make_inputs(1, n, k, seed=i, boxes=True) for i, (n, k) in enumerate(counts)]
    batch = dict(
        region_features=torch.zeros(3, 5, 16), region_mask=torch.zeros(3, 5, dtype=torch.long),
        region_boxes=torch.zeros(3, 5, 4),
        attribute_ids=torch.zeros(3, 4, dtype=torch.long), attribute_mask=torch.zeros(3, 4, dtype=torch.long),
    )
    for i, ((n, k), one) in enumerate(zip(counts, alone)):
        batch["region_features"][i, :n] = one["region_features"][0]
        batch["region_features"][i, n:] = torch.randn(5 - n, 16, generator=g) * 100  # garbage in the padding
        batch["region_mask"][i, :n] = 1
        batch["region_boxes"][i, :n] = one["region_boxes"][0]
        batch["attribute_ids"][i, :k] = one["attribute_ids"][0]
        batch["attribute_ids"][i, k:] = 7  # a real word id in the padding: only the mask may hide it
        batch["attribute_mask"][i, :k] = 1
    ids = torch.randint(4, 40, (3, 6), generator=g)
    batched = model(**batch, decoder_input_ids=ids, use_cache=False).logits
    for i, one in enumerate(alone):
        single = model(**one, decoder_input_ids=ids[i:i + 1], use_cache=False).logits
        torch.testing.assert_close(batched[i:i + 1], single, atol=1e-5, rtol=1e-5)


def test_zero_attribute_words_work_in_every_form():
    model = model_for(tiny_config())
    inputs = make_inputs(attributes=0)
    ids = torch.randint(4, 40, (3, 5))
    none = model(region_features=inputs["region_features"], decoder_input_ids=ids).logits
    empty = model(**inputs, decoder_input_ids=ids).logits
    masked = model(region_features=inputs["region_features"], attribute_ids=torch.full((3, 2), 9),
                   attribute_mask=torch.zeros(3, 2, dtype=torch.long), decoder_input_ids=ids).logits
    assert torch.isfinite(none).all()
    torch.testing.assert_close(none, empty)
    torch.testing.assert_close(none, masked, atol=1e-5, rtol=1e-5)
    generated = model.generate(region_features=inputs["region_features"], num_beams=2, max_new_tokens=4)
    assert generated.shape[0] == 3


def test_boxes_are_used_when_given():
    model = model_for(tiny_config())
    inputs = make_inputs(boxes=True)
    ids = torch.randint(4, 40, (3, 5))
    with_boxes = model(**inputs, decoder_input_ids=ids).logits
    inputs.pop("region_boxes")
    without = model(**inputs, decoder_input_ids=ids).logits
    assert not torch.allclose(with_boxes, without)


def test_attention_maps_on_request():
    model = model_for(tiny_config())
    out = model(**make_inputs(), decoder_input_ids=torch.randint(4, 40, (3, 6)), output_attentions=True)
    assert out.encoder_attentions[0].shape == (3, 4, 5, 5)  # region groupings
    assert out.attribute_attentions[0].shape == (3, 4, 6, 4)  # attribute collocations per input word
    assert out.cross_attentions[0].shape == (3, 4, 6, 5)  # region attention per word
    assert out.local_region_attentions[0].shape == (3, 4, 6, 5)
    assert out.local_attribute_attentions[0].shape == (3, 4, 6, 4)
    for maps in (out.encoder_attentions, out.cross_attentions, out.attribute_attentions):
        torch.testing.assert_close(maps[0].sum(-1), torch.ones_like(maps[0].sum(-1)))
    context = out.decoder_attentions[0]
    assert torch.all(context.triu(diagonal=1) == 0)  # nothing attends to future words
    assert model(**make_inputs(), decoder_input_ids=torch.ones(3, 2, dtype=torch.long)).cross_attentions is None


def test_label_smoothing_from_the_config():
    inputs, labels = make_inputs(), torch.randint(4, 40, (3, 6))
    plain = model_for(tiny_config())(**inputs, labels=labels).loss
    smoothed = model_for(tiny_config(label_smoothing=0.1))(**inputs, labels=labels).loss
    assert smoothed.item() != pytest.approx(plain.item())
    masked = labels.clone()
    masked[:, 3:] = -100
    logits = model_for(tiny_config())(**inputs, labels=masked).logits
    expected = torch.nn.functional.cross_entropy(logits[:, :3].reshape(-1, 40), labels[:, :3].reshape(-1))
    assert model_for(tiny_config())(**inputs, labels=masked).loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(region_features=torch.randn(3, 5, 8)), "width 8, the model expects region_feature_size=16"),
        (dict(region_features=torch.randn(5, 16)), "must be 3-D"),
        (dict(region_mask=torch.ones(3, 4)), "region_mask has shape"),
        (dict(region_boxes=torch.ones(3, 5, 2)), "region_boxes has shape"),
        (dict(region_features=torch.randn(3, 0, 16), region_mask=None), "no region"),
    ],
)
def test_bad_inputs_get_clear_errors(change, message):
    inputs = {**make_inputs(boxes=True), **change}
    with pytest.raises(ValueError, match=message):
        model_for(tiny_config())(**inputs, decoder_input_ids=torch.ones(3, 2, dtype=torch.long))


def test_forward_without_words_says_to_use_generate():
    with pytest.raises(ValueError, match="decoder_input_ids or labels"):
        model_for(tiny_config())(**make_inputs())


# ---------------------------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------------------------
def sequence_log_prob(model, inputs, sequence):
    """log p(sequence | image) of one image, by a full forward pass."""
    ids = torch.tensor([sequence])
    logits = model(**inputs, decoder_input_ids=ids[:, :-1], use_cache=False).logits
    return logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).sum().item()


def test_beam_search_matches_exhaustive_search_on_a_tiny_vocabulary():
    config = tiny_config(vocab_size=6)
    model = model_for(config, seed=3)
    inputs = make_inputs(batch=1, attributes=2)
    inputs["attribute_ids"] = torch.tensor([[4, 5]])
    steps = 3
    candidates = []
    for length in range(1, steps + 1):
        for words in itertools.product(range(6), repeat=length):
            if config.eos_token_id in words[:-1]:
                continue  # a caption ends at its first <eos>
            if words[-1] != config.eos_token_id and length < steps:
                continue  # unfinished captions compete only when they reach the length limit
            candidates.append([config.bos_token_id, *words])
    best = max(candidates, key=lambda seq: sequence_log_prob(model, inputs, seq))
    out = model.generate(**inputs, num_beams=6 ** 2, max_new_tokens=steps, length_penalty=0.0,
                         early_stopping=True, return_dict_in_generate=True, output_scores=True)
    found = out.sequences[0].tolist()
    if config.eos_token_id in found:
        found = found[: found.index(config.eos_token_id) + 1]
    assert found == best
    assert out.sequences_scores[0].item() == pytest.approx(sequence_log_prob(model, inputs, best), abs=1e-4)


def test_beam_search_scores_at_least_greedy():
    model = model_for(tiny_config(), seed=5)
    inputs = make_inputs(batch=4)
    greedy = model.generate(**inputs, num_beams=1, max_new_tokens=5, min_new_tokens=5)
    beam = model.generate(**inputs, num_beams=4, max_new_tokens=5, min_new_tokens=5, length_penalty=0.0)
    for i in range(4):
        one = {k: v[i:i + 1] for k, v in inputs.items()}
        assert sequence_log_prob(model, one, beam[i].tolist()) >= sequence_log_prob(model, one, greedy[i].tolist()) - 1e-5


def test_generate_batched_equals_alone_and_honours_options():
    model = model_for(tiny_config(), seed=7)
    inputs = make_inputs(batch=3)
    inputs["region_mask"][1, 3:] = 0
    inputs["attribute_mask"][2, 1:] = 0
    batched = model.generate(**inputs, num_beams=3, max_new_tokens=6)
    for i in range(3):
        one = dict(
            region_features=inputs["region_features"][i:i + 1, : int(inputs["region_mask"][i].sum())],
            attribute_ids=inputs["attribute_ids"][i:i + 1, : int(inputs["attribute_mask"][i].sum())],
        )
        alone = model.generate(**one, num_beams=3, max_new_tokens=6)[0]
        assert batched[i, : alone.shape[0]].tolist() == alone.tolist()
    several = model.generate(**inputs, num_beams=4, num_return_sequences=2, max_new_tokens=6)
    assert several.shape[0] == 6
    forced = model.generate(**inputs, num_beams=1, max_new_tokens=6, min_new_tokens=6)
    assert forced.shape[1] == 7 and not (forced[:, 1:-1] == model.config.eos_token_id).any()
    torch.manual_seed(0)
    sampled_a = model.generate(**inputs, do_sample=True, num_beams=1, max_new_tokens=6)
    torch.manual_seed(0)
    sampled_b = model.generate(**inputs, do_sample=True, num_beams=1, max_new_tokens=6)
    assert torch.equal(sampled_a, sampled_b)


def test_generate_uses_the_cache_and_agrees_with_no_cache():
    model = model_for(tiny_config(), seed=11)
    inputs = make_inputs()
    cached = model.generate(**inputs, num_beams=3, max_new_tokens=6, use_cache=True)
    uncached = model.generate(**inputs, num_beams=3, max_new_tokens=6, use_cache=False)
    assert torch.equal(cached, uncached)


# ---------------------------------------------------------------------------------------------------------------
# saving, loading, Auto classes, remote code
# ---------------------------------------------------------------------------------------------------------------
def test_save_and_load_restore_identical_outputs(tmp_path):
    model = model_for(tiny_config())
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert "model.safetensors" in files and "config.json" in files
    # the code travels with the checkpoint, the config checks its config imports included
    assert {"configuration_glied.py", "modeling_glied.py", "config_checks.py"} <= files
    inputs, ids = make_inputs(), torch.randint(4, 40, (3, 5))
    for loader in (GLIEDForCaptioning, transformers.AutoModelForImageTextToText):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert type(loaded) is GLIEDForCaptioning
        torch.testing.assert_close(loaded(**inputs, decoder_input_ids=ids).logits,
                                   model(**inputs, decoder_input_ids=ids).logits)
        assert loaded.lm_head.weight.data_ptr() == loaded.model.shared.weight.data_ptr()
    assert transformers.AutoConfig.from_pretrained(tmp_path).model_type == "glied"
    base = transformers.AutoModel.from_pretrained(tmp_path)
    assert type(base).__name__ == "GLIEDModel"


@pytest.mark.slow
def test_trust_remote_code_loads_where_the_package_is_not_importable(tmp_path):
    model = model_for(tiny_config())
    model.save_pretrained(tmp_path / "ckpt")
    inputs = make_inputs()
    torch.save(inputs, tmp_path / "inputs.pt")
    expected = model.generate(**inputs, num_beams=3, max_new_tokens=5)
    script = WITHOUT_GLIED + textwrap.dedent(f"""
        import torch, transformers
        model = transformers.AutoModelForImageTextToText.from_pretrained({str(tmp_path / 'ckpt')!r}, trust_remote_code=True)
        inputs = torch.load({str(tmp_path / 'inputs.pt')!r})
        print(type(model).__module__)
        print(model.generate(**inputs, num_beams=3, max_new_tokens=5).tolist())
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HOME"] = str(tmp_path / "hf_home")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    module, generated = result.stdout.strip().splitlines()[-2:]
    assert module.startswith("transformers_modules")
    assert eval(generated) == expected.tolist()


def test_caption_image_index_runs_the_encoder_once_per_image():
    model = model_for(tiny_config())
    inputs = make_inputs(batch=2, boxes=True)
    index = torch.tensor([0, 0, 1, 1, 1])
    labels = torch.randint(4, 40, (5, 6))
    repeated = {k: v.index_select(0, index) for k, v in inputs.items()}
    expected = model(**repeated, labels=labels)
    shared = model(**inputs, labels=labels, caption_image_index=index)
    torch.testing.assert_close(shared.logits, expected.logits, atol=1e-5, rtol=1e-5)
    assert shared.loss.item() == pytest.approx(expected.loss.item(), rel=1e-5)
