"""Validators for configs and command lines: each raises a `ConfigError` that says what to give instead."""

from __future__ import annotations

import math

from .errors import ConfigError


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_retain(retain: float, what: str = "retain") -> None:
    if not _is_number(retain):
        raise ConfigError(f"{what}={retain!r} must be a number in (0, 1]: the share of visual tokens to keep")
    if not (0.0 < float(retain) <= 1.0):
        raise ConfigError(
            f"{what}={retain!r} is outside (0, 1]: it is the share of visual tokens to keep, e.g. 0.1 keeps 10%"
        )


def check_number(value: object, what: str, low: float, high: float = math.inf, low_open: bool = False) -> None:
    """A finite real number (not a bool or a string) in [low, high] (or (low, high] with low_open)."""
    ok = _is_number(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        span = f"{'(' if low_open else '['}{low:g}, {high:g}]" if high != math.inf else (
            f"{'>' if low_open else '>='} {low:g}")
        raise ConfigError(f"{what}={value!r} must be a number {span}")


def check_int(value: object, what: str, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{what}={value!r} must be an integer >= {low}")


def check_bool(value: object, what: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{what}={value!r} must be True or False")


def check_layer(layer: int, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not isinstance(layer, int) or isinstance(layer, bool) or layer < low:
        where = ">= 0 (0 prunes before the first decoder layer)" if allow_zero else ">= 1 (a decoder layer index)"
        raise ConfigError(f"layer={layer!r} must be an integer {where}")


def check_unique(items: list, what: str) -> None:
    """A list of runs names each once: a repeat would be run, and counted in every summary, twice."""
    twice = sorted({x for x in items if items.count(x) > 1}, key=items.index)
    if twice:
        raise ConfigError(f"{what} lists {', '.join(map(str, twice))} more than once; name each once")


def check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{what}={value!r} is not one of {', '.join(map(repr, choices))}")
