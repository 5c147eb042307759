import pytest
import torch

from sharp_vlm.core.context import context_key
from sharp_vlm.core.dedup import dedup_select
from sharp_vlm.methods.experimental.rules import frame_key


def _grid(frames: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    f, r, c = torch.meshgrid(torch.arange(frames), torch.arange(h), torch.arange(w), indexing="ij")
    return f.flatten(), r.flatten(), c.flatten()


def test_rings_around_one_anchor_in_a_row() -> None:
    f, r, c = _grid(1, 1, 10)
    key = context_key(torch.tensor([5]), f, r, c, radius=2)
    assert key[5] == 0  # the anchor itself is kept already
    assert key[4] == key[6] > key[3] == key[7] > 0  # nearer ring first
    assert (key[[0, 1, 2, 8, 9]] == 0).all()


def test_better_anchor_first_inside_a_ring() -> None:
    f, r, c = _grid(1, 1, 20)
    key = context_key(torch.tensor([15, 3]), f, r, c, radius=1)  # 15 was chosen first
    assert key[14] == key[16] > key[2] == key[4] > 0
    key2 = context_key(torch.tensor([15, 3]), f, r, c, radius=2)
    assert key2[2] > key2[13]  # ring 1 of the second anchor before ring 2 of the first


def test_context_stays_inside_the_frame_and_covers_diagonals() -> None:
    f, r, c = _grid(2, 3, 3)  # two frames of 3 x 3
    centre, corner = 4, 8  # frame 0: (1, 1) and (2, 2)
    key = context_key(torch.tensor([centre]), f, r, c, radius=1)
    assert (key[:9] > 0).sum() == 8 and (key[9:] == 0).all()
    key = context_key(torch.tensor([corner]), f, r, c, radius=1)
    assert sorted(torch.nonzero(key).flatten().tolist()) == [4, 5, 7]  # (1,1), (1,2), (2,1); not frame 1's (0,0)


def test_no_anchor_or_zero_radius_gives_zero_and_bad_radius_is_refused() -> None:
    f, r, c = _grid(1, 2, 2)
    assert (context_key(torch.zeros(0, dtype=torch.long), f, r, c) == 0).all()
    assert (context_key(torch.tensor([0]), f, r, c, radius=0) == 0).all()
    with pytest.raises(ValueError, match="radius"):
        context_key(torch.tensor([0]), f, r, c, radius=-1)


def test_fill_follows_the_key_then_the_score() -> None:
    # every token is a duplicate of token 0, so the walk keeps one and the fill step chooses the rest
    n = 12
    feats = torch.ones(n, 4)
    scores = torch.arange(n, 0, -1).float()  # rank == index
    scores[7] = 100.0  # the best token: the walk keeps it
    f, r, c = _grid(1, 1, n)
    by_score = dedup_select(scores, feats, budget=4, tau=0.9)
    assert by_score.keep.tolist() == [0, 1, 2, 7] and by_score.n_filled == 3
    res = dedup_select(scores, feats, budget=4, tau=0.9, fill_key=lambda a: context_key(a, f, r, c, radius=1))
    # the anchor's neighbours 6 and 8 first, then the best remaining score (token 0)
    assert res.keep.tolist() == [0, 6, 7, 8] and res.filled.tolist()[:2] == [6, 8]
    res = dedup_select(scores, feats, budget=6, tau=0.9, fill_key=lambda a: context_key(a, f, r, c, radius=2))
    assert res.filled.tolist()[:4] == [6, 8, 5, 9]


def test_context_fill_takes_registers_last() -> None:
    n = 8
    feats = torch.ones(n, 4)
    feats[3] *= 50  # a norm outlier next to the anchor
    scores = torch.arange(n, 0, -1).float()
    scores[2] = 100.0
    f, r, c = _grid(1, 1, n)
    res = dedup_select(scores, feats, budget=3, tau=0.9, max_registers=0, register_sigma=2.0,
                       fill_key=lambda a: context_key(a, f, r, c, radius=1))
    assert res.registers.tolist() == [3]
    assert res.keep.tolist() == [0, 1, 2]  # neighbour 1, then the best score 0; the register 3 waits


def test_fill_share_leaves_part_of_the_budget_to_context() -> None:
    # distinct tokens everywhere: without a share the walk alone fills the budget in score order
    n = 16
    feats = torch.eye(n)
    scores = torch.arange(n, 0, -1).float()
    scores[10] = 100.0
    f, r, c = _grid(1, 1, n)
    walk_only = dedup_select(scores, feats, budget=4, tau=0.9)
    assert walk_only.keep.tolist() == [0, 1, 2, 10] and walk_only.n_filled == 0
    res = dedup_select(scores, feats, budget=4, tau=0.9, fill_share=0.5,
                       fill_key=lambda a: context_key(a, f, r, c, radius=1))
    # the walk keeps 10 and 0; the rest goes to their context, the better anchor's first: 9 and 11
    assert res.keep.tolist() == [0, 9, 10, 11] and res.n_filled == 2
    with pytest.raises(ValueError, match="fill_share"):
        dedup_select(scores, feats, budget=4, fill_share=1.0)


def test_frame_key_puts_rings_first_then_the_best_anchors_frames_whole() -> None:
    f, r, c = _grid(3, 1, 6)  # three frames of one row of 6
    anchors = torch.tensor([14, 2, 3])  # frame 2 holds the best anchor, frame 0 the next two; frame 1 none
    key = frame_key(anchors, f, r, c, radius=1)
    ring = context_key(anchors, f, r, c, radius=1)
    assert torch.equal(key[ring > 0], ring[ring > 0])  # the rings keep their order
    rest = (ring == 0) & ~torch.isin(torch.arange(18), anchors)
    assert key[rest].max() < ring[ring > 0].min()  # every ring before any frame
    assert key[16] == key[17] > key[0] == key[5] > 0  # the best anchor's frame first, each frame whole
    assert (key[6:12] == 0).all() and (key[anchors] == 0).all()  # no anchor: by score; anchors are kept already
    # a frame ranks by its best anchor: frame 0 holds ranks 0 and 2, frame 2 rank 1
    key = frame_key(torch.tensor([2, 14, 3]), f, r, c, radius=1)
    assert key[0] == key[5] > key[16] == key[17] > 0
    assert (frame_key(torch.zeros(0, dtype=torch.long), f, r, c) == 0).all()


def test_frame_fill_adds_whole_frames_in_anchor_order() -> None:
    # every token is a duplicate, so the walk keeps the best one and the fill takes the rest
    f, r, c = _grid(3, 1, 4)
    n = 12
    scores = torch.arange(n, 0, -1).float()  # rank == index: frame 0 scores best
    scores[9] = 100.0  # the walk keeps 9 (frame 2)
    res = dedup_select(scores, torch.ones(n, 4), budget=5, tau=0.9,
                       fill_key=lambda a: frame_key(a, f, r, c, radius=1))
    # ring 8, 10; then frame 2's rest (11); then the best score (0)
    assert res.filled.tolist() == [8, 10, 11, 0]
    # two anchor frames beyond the rings: the better anchor's frame is completed first
    f, r, c = _grid(3, 1, 5)
    feats = torch.eye(15)
    feats[[2, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14]] = feats[0].clone()  # duplicates of 0: only 0, 1, 3, 12 walk
    scores = torch.zeros(15)
    scores[[12, 1, 3, 0]] = torch.tensor([4.0, 3.0, 2.0, 1.0])  # 12 (frame 2) first, then frame 0's 1 and 3
    res = dedup_select(scores, feats, budget=10, tau=0.9, fill_key=lambda a: frame_key(a, f, r, c, radius=1))
    assert res.keep.tolist() == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14] and res.n_filled == 6
    assert res.filled.tolist()[:4] == [11, 13, 2, 4]  # rings, the best anchor's first
    assert set(res.filled.tolist()[4:]) == {10, 14}  # then frame 2 whole, before frame 0's 0 (kept) and frame 1
    f, r, c = _grid(3, 1, 4)
    scores = torch.arange(n, 0, -1).float()
    scores[9] = 100.0
    by_ring = dedup_select(scores, torch.ones(n, 4), budget=5, tau=0.9,
                           fill_key=lambda a: context_key(a, f, r, c, radius=1))
    assert by_ring.filled.tolist() == [8, 10, 0, 1]  # the context fill goes back to the score after the ring
