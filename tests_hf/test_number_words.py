"""`sharp_vlm.core.words.number_words` against num2words, which SmolVLM's processor writes a video's frame count
with."""

from __future__ import annotations

import pytest

from sharp_vlm.core.words import number_words


def test_number_words_is_num2words():
    num2words = pytest.importorskip("num2words").num2words
    values = list(range(3000)) + [10**k + d for k in range(3, 15) for d in (-1, 0, 1, 99, 101, 1001)]
    assert [number_words(n) for n in values] == [num2words(n) for n in values]
