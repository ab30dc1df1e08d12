"""Checks of configuration values, shared by the configs of this package (GLIED, its attribute detector, HM-LSTM).

Each raises a ValueError that names the config class, the field and the value it got. The checks live in a module
of their own so that a checkpoint's remote code (`trust_remote_code=True`) carries them with its config file.
"""


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fail(config, name, requirement, value):
    raise ValueError(f"{type(config).__name__}.{name} {requirement}, got {value!r}")


def check_positive_ints(config, *names):
    """Each field is an integer > 0 (sizes, counts)."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            _fail(config, name, "must be a positive integer", value)


def check_positive_numbers(config, *names):
    """Each field is a number > 0 (initialisation ranges, epsilons)."""
    for name in names:
        value = getattr(config, name)
        if not _is_number(value) or value <= 0:
            _fail(config, name, "must be a positive number", value)


def check_non_negative_numbers(config, *names):
    """Each field is a number >= 0 (margins, loss weights)."""
    for name in names:
        value = getattr(config, name)
        if not _is_number(value) or value < 0:
            _fail(config, name, "must be a number >= 0", value)


def check_fractions(config, *names):
    """Each field lies in [0, 1) (dropout and smoothing rates)."""
    for name in names:
        value = getattr(config, name)
        if not _is_number(value) or not 0.0 <= value < 1.0:
            _fail(config, name, "must lie in [0, 1)", value)


def check_switches(config, *names):
    """Each field is True or False."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, bool):
            _fail(config, name, "is a switch and must be True or False", value)


def check_token_ids(config, *names):
    """Each field is a token id in [0, vocab_size)."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < config.vocab_size:
            _fail(config, name, f"must be a token id in [0, vocab_size={config.vocab_size})", value)
