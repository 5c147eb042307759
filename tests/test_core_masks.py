import pytest
import torch

from sharp_vlm.core.masks import (
    batched_segment_allowed,
    group_segments,
    segment_allowed,
    to_attention_mask,
)

MODES = ("off", "bidirectional", "local")


def _layout(prefix: int, frames: list[int], suffix: int, first_seg: int = 0) -> torch.Tensor:
    """Text prefix, one contiguous segment per entry of ``frames`` (its length), text suffix."""
    parts = [torch.full((prefix,), -1)]
    for i, length in enumerate(frames):
        parts.append(torch.full((length,), first_seg + i))
    parts.append(torch.full((suffix,), -1))
    return torch.cat(parts).long()


def _two_videos() -> torch.Tensor:
    # system/text, video A (segments 0, 1), text between, video B (segments 2, 3, 4), question.
    return torch.cat([_layout(3, [4, 2], 2), _layout(0, [3, 1, 2], 4, first_seg=2)])


def _reference(seg: torch.Tensor, mode: str) -> torch.Tensor:
    """Loop-based definition of the three modes, straight from their description."""
    s = seg.numel()
    visual = [i for i in range(s) if seg[i] >= 0]
    first_visual = visual[0] if visual else s
    out = torch.zeros(s, s, dtype=torch.bool)
    for i in range(s):
        for j in range(s):
            if mode == "off" or seg[i] < 0:
                ok = j <= i
            else:
                members = [t for t in range(s) if seg[t] == seg[i]]
                if mode == "bidirectional":
                    ok = j < min(members) or seg[j] == seg[i]
                else:
                    ok = seg[j] == seg[i] or j < first_visual
            out[i, j] = ok or i == j
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "seg",
    [
        _layout(3, [4, 2, 5], 3),
        _two_videos(),
        _layout(0, [2, 3], 0),
        _layout(5, [], 2),
        _layout(0, [1, 1, 1], 2),
    ],
)
def test_matches_reference(seg: torch.Tensor, mode: str) -> None:
    assert torch.equal(segment_allowed(seg, mode), _reference(seg, mode))


def test_off_is_tril() -> None:
    seg = _two_videos()
    s = seg.numel()
    assert torch.equal(segment_allowed(seg, "off"), torch.tril(torch.ones(s, s, dtype=torch.bool)))


def test_bidirectional_visual_rows_are_segment_plus_before() -> None:
    seg = _two_videos()
    allowed = segment_allowed(seg, "bidirectional")
    pos = torch.arange(seg.numel())
    for i in torch.nonzero(seg >= 0).flatten().tolist():
        members = pos[seg == seg[i]]
        start, end = int(members.min()), int(members.max())
        expected = pos <= end  # everything before the segment and the whole segment
        assert torch.equal(allowed[i], expected)
        assert allowed[i, start : end + 1].all()
        assert not allowed[i, end + 1 :].any()


def test_bidirectional_single_token_segments_equal_causal() -> None:
    s = 17
    seg = torch.full((s,), -1)
    seg[4:13] = torch.arange(9)  # one token per segment
    causal = torch.tril(torch.ones(s, s, dtype=torch.bool))
    assert torch.equal(segment_allowed(seg, "bidirectional"), causal)


def test_local_is_own_segment_plus_prefix() -> None:
    seg = _two_videos()
    allowed = segment_allowed(seg, "local")
    pos = torch.arange(seg.numel())
    first_visual = int(torch.nonzero(seg >= 0)[0])
    for i in torch.nonzero(seg >= 0).flatten().tolist():
        expected = (seg == seg[i]) | (pos < first_visual)
        assert torch.equal(allowed[i], expected)
    # Text between the two videos is not visible to video B.
    between = 3 + 6  # first token after video A
    b_token = 3 + 6 + 2
    assert not allowed[b_token, between]


@pytest.mark.parametrize("mode", MODES)
def test_text_rows_are_causal(mode: str) -> None:
    seg = _two_videos()
    allowed = segment_allowed(seg, mode)
    pos = torch.arange(seg.numel())
    for i in torch.nonzero(seg < 0).flatten().tolist():
        assert torch.equal(allowed[i], pos <= i)


@pytest.mark.parametrize("mode", MODES)
def test_diagonal_always_allowed(mode: str) -> None:
    seg = _two_videos()
    assert segment_allowed(seg, mode).diagonal().all()


@pytest.mark.parametrize("mode", MODES)
def test_rows_match_full_matrix(mode: str) -> None:
    seg = _two_videos()
    full = segment_allowed(seg, mode)
    rows = torch.tensor([0, 5, 2, seg.numel() - 1, 9, 9, 12])
    assert torch.equal(segment_allowed(seg, mode, rows=rows), full[rows])
    assert torch.equal(segment_allowed(seg, mode, rows=[3, 4]), full[[3, 4]])
    with pytest.raises(ValueError):
        segment_allowed(seg, mode, rows=torch.tensor([seg.numel()]))


@pytest.mark.parametrize("mode", MODES)
def test_batched_matches_per_sample(mode: str) -> None:
    a = _two_videos()
    b = _layout(1, [3, 3, 3], a.numel() - 10)
    c = torch.full_like(a, -1)  # no visual tokens at all
    batch = torch.stack([a, b, c])
    out = batched_segment_allowed(batch, mode)
    assert out.shape == (3, a.numel(), a.numel())
    for i in range(3):
        assert torch.equal(out[i], segment_allowed(batch[i], mode))
    rows = torch.tensor([1, 7])
    assert torch.equal(batched_segment_allowed(batch, mode, rows=rows), out[:, rows])


def test_unknown_mode_raises() -> None:
    with pytest.raises(ValueError):
        segment_allowed(_two_videos(), "diagonal")


def test_group_segments() -> None:
    frames = torch.tensor([-1, -1, 0, 0, 1, 1, 2, 3, 4, -1, 5])
    assert torch.equal(group_segments(frames, 1), frames)
    assert torch.equal(group_segments(frames, 2), torch.tensor([-1, -1, 0, 0, 0, 0, 1, 1, 2, -1, 2]))
    assert torch.equal(group_segments(frames, 3), torch.tensor([-1, -1, 0, 0, 0, 0, 0, 1, 1, -1, 1]))
    batch = torch.stack([frames, torch.tensor([0, 1, 2, 3, -1, -1, -1, -1, -1, -1, -1])])
    assert torch.equal(group_segments(batch, 2)[1, :4], torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError):
        group_segments(frames, 0)


def test_grouped_segments_feed_masks() -> None:
    # Grouping frames widens the bidirectional window to k frames.
    frames = torch.tensor([-1, 0, 0, 1, 1, 2, 2, -1])
    allowed = segment_allowed(group_segments(frames, 2), "bidirectional")
    assert allowed[1, 4] and not allowed[1, 5]
    assert allowed[5, 6] and not allowed[5, 7]


def test_to_attention_mask_bool_and_additive() -> None:
    seg = _two_videos()
    allowed = segment_allowed(seg, "bidirectional")
    s = seg.numel()

    m_bool = to_attention_mask(allowed, torch.float32, "bool")
    assert m_bool.dtype == torch.bool and m_bool.shape == (1, 1, s, s)
    assert torch.equal(m_bool[0, 0], allowed)

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        m_add = to_attention_mask(allowed, dtype, "additive")
        assert m_add.dtype == dtype and m_add.shape == (1, 1, s, s)
        assert (m_add[0, 0][allowed] == 0).all()
        assert (m_add[0, 0][~allowed] == torch.finfo(dtype).min).all()

    batch = batched_segment_allowed(torch.stack([seg, seg]), "local")
    assert to_attention_mask(batch, torch.float32, "bool").shape == (2, 1, s, s)
    rows = segment_allowed(seg, "local", rows=torch.tensor([2, 3]))
    assert to_attention_mask(rows, torch.float32, "additive").shape == (1, 1, 2, s)
    with pytest.raises(ValueError):
        to_attention_mask(allowed, torch.float32, "float")


def test_masks_work_with_sdpa() -> None:
    # The bool mask plugs into SDPA and equals the eager computation with the additive mask.
    torch.manual_seed(0)
    seg = _two_videos()
    s = seg.numel()
    allowed = segment_allowed(seg, "bidirectional")
    q, k, v = (torch.randn(1, 2, s, 8) for _ in range(3))
    out_sdpa = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=to_attention_mask(allowed, q.dtype, "bool")
    )
    logits = q @ k.transpose(-1, -2) / 8**0.5 + to_attention_mask(allowed, q.dtype, "additive")
    out_eager = logits.softmax(-1) @ v
    torch.testing.assert_close(out_sdpa, out_eager, atol=1e-5, rtol=1e-5)
