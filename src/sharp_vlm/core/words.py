"""Whole numbers in English words, as `num2words` writes them: SmolVLM's processor puts a video's frame count in
its prompt so, and the torch-only preprocessing and the tiny test prompts must write the same text."""

from __future__ import annotations

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = ["", " thousand", " million", " billion", " trillion"]


def _below_thousand(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    rest = n % 100
    return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + _below_thousand(rest))


def number_words(n: int) -> str:
    """`n` (0 <= n < 10**15) in words: 21 -> "twenty-one", 101 -> "one hundred and one",
    1001 -> "one thousand and one", 1100 -> "one thousand, one hundred"."""
    if not 0 <= n < 1000 ** len(_SCALES):
        raise ValueError(f"number_words takes 0 <= n < 10**{3 * len(_SCALES)}, got {n}")
    if n == 0:
        return _ONES[0]
    groups = [(n // 1000**s % 1000, s) for s in reversed(range(len(_SCALES)))]
    groups = [(g, s) for g, s in groups if g]  # the non-zero groups of three digits, highest first
    words = [_below_thousand(g) + _SCALES[s] for g, s in groups]
    last, scale = groups[-1]
    if len(words) > 1 and scale == 0 and last < 100:  # num2words: "one thousand and one", else commas
        return ", ".join(words[:-1]) + " and " + words[-1]
    return ", ".join(words)
