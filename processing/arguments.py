"""Checks of the arguments of processing functions: each returns the value or raises a ValueError naming it."""
import math


def positive_int(value, name):
    """`value` if it is a positive integer, else a ValueError naming `name`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def finite_number(value, name):
    """`value` as a float if it is a finite number, else a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)
