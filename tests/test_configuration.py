import pytest

from modeling_glied import GLIEDConfig


def test_defaults_are_the_papers_setting():
    config = GLIEDConfig()
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size) == (512, 8, 2048)
    assert config.global_visual_distilling and config.global_attribute_distilling and config.local_distilling
    assert not config.is_base_model
    assert GLIEDConfig.base().is_base_model
    assert config.is_encoder_decoder and config.decoder_start_token_id == config.bos_token_id


def test_round_trip(tmp_path):
    config = GLIEDConfig(vocab_size=77, hidden_size=64, num_attention_heads=4, local_distilling=False)
    config.save_pretrained(tmp_path)
    loaded = GLIEDConfig.from_pretrained(tmp_path)
    assert loaded.vocab_size == 77 and loaded.hidden_size == 64 and loaded.local_distilling is False
    assert loaded.global_visual_distilling is True


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hidden_size=30), "divisible by num_attention_heads"),
        (dict(vocab_size=0), "vocab_size must be a positive integer"),
        (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob must lie in"),
        (dict(attention_probs_dropout_prob=False), "attention_probs_dropout_prob must lie in"),  # a rate, not a switch
        (dict(local_distilling="yes"), "local_distilling is a switch"),
        (dict(vocab_size=3), "unk_token_id must be a token id"),
        (dict(eos_token_id=0), "must be distinct"),
    ],
)
def test_invalid_values_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GLIEDConfig(**kwargs)
