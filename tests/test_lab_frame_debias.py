"""The per-frame median baseline of debias="frame"."""

from __future__ import annotations

import pytest
import torch

from sharp_vlm.methods.experimental.rules import frame_medians, subtract_frame_median


def _loop_medians(s: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return torch.stack([s[f == f[i]].median() for i in range(s.numel())])


@pytest.mark.parametrize("seed", range(5))
def test_frame_medians_match_a_loop_over_frames(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 200, (1,), generator=g))
    s = torch.rand(n, generator=g)
    f = torch.randint(0, 9, (n,), generator=g)  # unsorted, ragged, some frame ids absent
    assert torch.equal(frame_medians(s, f), _loop_medians(s, f))


def test_a_per_frame_offset_is_removed_exactly():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(96, generator=g)
    f = torch.arange(96) // 12
    offset = torch.linspace(0.0, 5.0, 8)[f]  # a positional baseline that grows along the video
    shifted = frame_medians(s + offset, f) - offset
    assert torch.allclose(shifted, frame_medians(s, f), atol=1e-6)
    out = subtract_frame_median(s + offset, f)
    # every frame's median is 0 afterwards, and the order inside a frame is the input's
    assert torch.allclose(frame_medians(out, f), torch.zeros(96), atol=1e-7)
    for k in range(8):
        idx = f == k
        assert torch.equal(torch.argsort(out[idx]), torch.argsort(s[idx] + offset[idx]))


def test_lam_scales_the_subtracted_baseline():
    s = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
    f = torch.tensor([0, 0, 0, 1, 1, 1])
    n = s / s.sum()
    assert torch.allclose(subtract_frame_median(s, f, 0.5), n - 0.5 * n[[1, 1, 1, 4, 4, 4]])
    assert torch.allclose(subtract_frame_median(s, f, 0.0), n)


def test_frame_ids_need_not_start_at_zero():
    s = torch.rand(40, generator=torch.Generator().manual_seed(1))
    f = torch.arange(40) // 8
    assert torch.equal(frame_medians(s, f + 100), frame_medians(s, f))


def test_shapes_and_ids_are_checked():
    with pytest.raises(ValueError, match="both be"):
        frame_medians(torch.rand(4), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="both be"):
        frame_medians(torch.rand(2, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=">= 0"):
        frame_medians(torch.rand(3), torch.tensor([0, -1, 1]))
    assert frame_medians(torch.zeros(0), torch.zeros(0, dtype=torch.long)).numel() == 0
