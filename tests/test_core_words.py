"""`number_words` writes a count as num2words does: SmolVLM's processor writes a video's frame count with num2words,
and the torch-only preprocessing and the tiny SmolVLM prompts must write the same text (`make test-hf` compares
with num2words itself, which is not installed here)."""

from __future__ import annotations

import pytest
import torch

from sharp_vlm.core.words import number_words
from sharp_vlm.testing import save_tiny_checkpoint
from sharp_vlm.video.decode import Frames
from sharp_vlm.video.preprocess import prepare_inputs

# what num2words 0.5.14 writes (lang "en")
WRITTEN = {
    0: "zero",
    8: "eight",
    21: "twenty-one",
    64: "sixty-four",
    100: "one hundred",
    101: "one hundred and one",
    115: "one hundred and fifteen",
    120: "one hundred and twenty",
    999: "nine hundred and ninety-nine",
    1000: "one thousand",
    1001: "one thousand and one",
    1100: "one thousand, one hundred",
    1234: "one thousand, two hundred and thirty-four",
    100001: "one hundred thousand and one",
    1234567: "one million, two hundred and thirty-four thousand, five hundred and sixty-seven",
}


@pytest.mark.parametrize("n", sorted(WRITTEN))
def test_number_words_writes_what_num2words_writes(n):
    assert number_words(n) == WRITTEN[n]


def test_number_words_refuses_what_it_cannot_write():
    with pytest.raises(ValueError):
        number_words(-1)


def test_smolvlm_prompt_writes_a_count_over_a_hundred_in_words(tmp_path):
    n = 120
    frames = Frames(torch.zeros(n, 8, 8, 3, dtype=torch.uint8), [float(i) for i in range(n)], list(range(n)), 1.0, n)
    prep = prepare_inputs(save_tiny_checkpoint("smolvlm", tmp_path, layers=1), frames, "What?")
    assert "series of one hundred and twenty frames from a 0:02:00 [H:MM:SS] video" in prep.prompt
