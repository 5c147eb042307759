"""The block-wise segment attention equals SDPA with the dense segment mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import repeat_kv

from sharp_vlm.core.masks import segment_allowed
from sharp_vlm.engine.segment_attention import RUNS_KWARG, segment_attention, segment_runs


class _Attn(torch.nn.Module):
    num_key_value_groups = 3


def _ids(*parts: tuple[int, int]) -> torch.Tensor:
    """(segment id, length) pairs -> a (1, S) id row; id -1 is text."""
    return torch.cat([torch.full((n,), i) for i, n in parts])[None]


LAYOUTS = {
    "prefix+segments+question": _ids((-1, 5), (0, 7), (1, 7), (2, 7), (-1, 6)),
    "text between segments": _ids((-1, 1), (0, 4), (-1, 3), (1, 4), (-1, 1), (2, 5), (-1, 4)),
    "video first": _ids((0, 6), (1, 6), (-1, 5)),
    "one-token segments": _ids((-1, 2), (0, 1), (1, 1), (2, 1), (-1, 2)),
}


@pytest.mark.parametrize("mode", ["bidirectional", "local"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_block_attention_equals_dense_mask(mode, layout):
    seg = LAYOUTS[layout]
    s = seg.shape[1]
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, s, 8, generator=gen)
    k, v = torch.randn(2, 2, s, 8, generator=gen), torch.randn(2, 2, s, 8, generator=gen)
    runs = segment_runs(seg.expand(2, -1), mode)
    assert runs is not None and runs.runs[-1][1] == s
    out, weights = segment_attention(_Attn(), q, k, v, None, scaling=0.3, **{RUNS_KWARG: runs})
    allowed = segment_allowed(seg[0], mode)
    dense = F.scaled_dot_product_attention(q, repeat_kv(k, 3), repeat_kv(v, 3), attn_mask=allowed, scale=0.3)
    assert weights is None and out.shape == (2, s, 6, 8)
    torch.testing.assert_close(out, dense.transpose(1, 2), atol=1e-6, rtol=1e-5)


def test_without_runs_it_is_sdpa_with_the_given_mask():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 3, 10, 4, generator=gen) for _ in range(3))
    mask = torch.rand(10, 10, generator=gen) > 0.3
    mask |= torch.eye(10, dtype=torch.bool)
    module = _Attn()
    module.num_key_value_groups = 1
    out, _ = segment_attention(module, q, k, v, mask[None, None])
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2))


def test_runs_cover_the_rows_in_order():
    runs = segment_runs(LAYOUTS["text between segments"], "bidirectional")
    assert runs.runs == ((0, 1, False), (1, 5, True), (5, 8, False), (8, 12, True), (12, 13, False),
                         (13, 18, True), (18, 22, False))
    assert runs.prefix_end == 1


def test_no_block_form_where_it_would_be_wrong():
    assert segment_runs(_ids((-1, 2), (0, 3), (-1, 1), (0, 3)), "bidirectional") is None  # split segment
    two = torch.cat([_ids((-1, 2), (0, 4)), _ids((-1, 3), (0, 3))])
    assert segment_runs(two, "bidirectional") is None  # the samples differ
    assert segment_runs(_ids((0, 4)), "off") is None
