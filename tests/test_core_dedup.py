import math
import random

import pytest
import torch

from sharp_vlm.core.dedup import (
    DedupResult,
    center,
    dedup_select,
    dedup_select_batch,
    register_mask,
)
from sharp_vlm.methods.experimental.rules import distinct_key, with_neighbors

# Random cases keep every cosine this far from tau (and every norm this far from the register
# threshold) so float32 and float64 agree on each comparison.
MARGIN = 1e-4


@pytest.fixture(autouse=True)
def _single_thread():
    # Hundreds of tiny tensors: thread wake-ups would dominate, so run single-threaded here.
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _cos64(feats: torch.Tensor) -> torch.Tensor:
    f = feats.double()
    f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (f @ f.T).clamp(-1.0, 1.0)


def _registers64(feats: torch.Tensor, sigma: float) -> tuple[list[bool], torch.Tensor, float]:
    norms = feats.double().norm(dim=-1)
    thr = float(norms.mean() + sigma * norms.std(correction=0)) if norms.numel() else 0.0
    return [bool(x > thr) for x in norms], norms, thr


def reference_dedup(
    scores: torch.Tensor,
    feats: torch.Tensor,
    budget: int,
    tau: float = 0.9,
    max_registers: int = 1,
    register_sigma: float = 3.0,
    candidates: int | None = None,
) -> tuple[list[int], int, list[int], int, list[int]]:
    """Plain Python greedy walk: (keep, n_filled, registers, n_skipped_similar, filled)."""
    n = scores.numel()
    s = scores.double().tolist()
    is_reg, _, _ = _registers64(feats, register_sigma)
    cos = _cos64(feats).tolist()  # plain floats: tensor indexing in the loop is slow
    n_keep = min(budget, n)
    order = sorted(range(n), key=lambda i: (-s[i], i))
    m = min(n, candidates if candidates is not None else max(4 * budget, 256))

    kept: list[int] = []
    n_regs = 0
    skipped = 0
    for i in order[:m]:
        if len(kept) == n_keep:
            break
        if any(cos[i][j] > tau for j in kept):
            skipped += 1
            continue
        if is_reg[i]:
            if n_regs >= max_registers:
                continue
            n_regs += 1
        kept.append(i)

    rest = [i for i in order if i not in kept]
    fill = ([i for i in rest if not is_reg[i]] + [i for i in rest if is_reg[i]])[: n_keep - len(kept)]
    registers = [i for i in range(n) if is_reg[i]]
    return sorted(kept + fill), len(fill), registers, skipped, fill


def _well_separated(feats: torch.Tensor, tau: float, sigma: float) -> bool:
    n = feats.shape[0]
    cos = _cos64(feats)
    off = ~torch.eye(n, dtype=torch.bool)
    if n > 1 and ((cos - tau).abs()[off] < MARGIN).any():
        return False
    _, norms, thr = _registers64(feats, sigma)
    return not (n and ((norms - thr).abs() < MARGIN * max(thr, 1.0)).any())


def _random_case(rng: random.Random, dtype: torch.dtype = torch.float32) -> dict:
    """Clustered features with exact duplicates, noisy near-duplicates and big-norm outliers."""
    while True:
        n = rng.randint(1, 48)
        d = rng.choice([3, 4, 8, 16])
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        n_protos = rng.randint(1, max(1, n // 3))
        protos = torch.randn(n_protos, d, generator=gen)
        assign = torch.randint(0, n_protos, (n,), generator=gen)
        noise = torch.tensor([rng.choice([0.0, 0.05, 0.2, 0.5, 1.0]) for _ in range(n)]).unsqueeze(1)
        feats = protos[assign] + noise * torch.randn(n, d, generator=gen)
        for i in rng.sample(range(n), k=min(n, rng.randint(0, 3))):
            feats[i] *= rng.uniform(8.0, 30.0)  # register-like outliers
        if rng.random() < 0.3:
            scores = torch.randint(0, 4, (n,), generator=gen).float()  # many ties
        else:
            scores = torch.randn(n, generator=gen)
        feats = feats.to(dtype)
        scores = scores.to(dtype)
        params = {
            "budget": rng.randint(0, n + 3),
            "tau": rng.choice([0.3, 0.6, 0.8, 0.9, 0.95, 0.99]),
            "max_registers": rng.choice([0, 1, 2, 5]),
            "register_sigma": rng.choice([1.0, 2.0, 3.0]),
            "candidates": rng.choice([None, None, n, rng.randint(1, n)]),
        }
        if _well_separated(feats, params["tau"], params["register_sigma"]):
            return {"scores": scores, "feats": feats, **params}


def _check_shape(res: DedupResult, n: int, budget: int) -> None:
    k = min(budget, n)
    assert res.keep.dtype == torch.long
    assert res.keep.numel() == k
    assert torch.equal(res.keep, torch.sort(res.keep).values)
    assert torch.unique(res.keep).numel() == k
    if k:
        assert int(res.keep.min()) >= 0 and int(res.keep.max()) < n
    assert res.filled.numel() == res.n_filled
    assert set(res.filled.tolist()) <= set(res.keep.tolist())


@pytest.mark.parametrize(
    ("dtype", "seed"), [(torch.float32, 1234), (torch.bfloat16, 2345), (torch.float16, 3456)]
)
@pytest.mark.parametrize("chunk", [1, 3, 256])
def test_matches_reference_on_random_cases(dtype: torch.dtype, seed: int, chunk: int) -> None:
    # chunk 1 and 3 walk most cases over many chunks (similarity to earlier chunks, registers carried over)
    rng = random.Random(seed)
    for _ in range(150):
        case = _random_case(rng, dtype)
        res = dedup_select(**case, chunk=chunk)
        keep, n_filled, registers, skipped, fill = reference_dedup(**case)
        _check_shape(res, case["scores"].numel(), case["budget"])
        assert res.keep.tolist() == keep, case
        assert res.n_filled == n_filled
        assert res.registers.tolist() == registers
        assert res.n_skipped_similar == skipped
        assert res.filled.tolist() == fill


def test_walked_tokens_are_never_similar() -> None:
    rng = random.Random(7)
    saw_fill = saw_clean = 0
    for _ in range(200):
        case = _random_case(rng)
        res = dedup_select(**case)
        cos = _cos64(case["feats"])
        filled = set(res.filled.tolist())
        walked = torch.tensor([i for i in res.keep.tolist() if i not in filled], dtype=torch.long)
        sub = cos[walked][:, walked] - 2 * torch.eye(walked.numel(), dtype=torch.float64)
        assert not (sub > case["tau"]).any()
        if res.n_filled == 0:
            saw_clean += 1
            sub = cos[res.keep][:, res.keep] - 2 * torch.eye(res.keep.numel(), dtype=torch.float64)
            assert not (sub > case["tau"]).any()
        else:
            saw_fill += 1
    assert saw_fill and saw_clean  # both regimes were exercised


def test_register_cap() -> None:
    torch.manual_seed(0)
    n, d = 80, 16  # 4 outliers in 80 sit well above mean + 3 std
    feats = torch.nn.functional.normalize(torch.randn(n, d), dim=-1)
    regs = [3, 11, 25, 30]
    feats[regs] *= 50.0
    scores = torch.rand(n)
    scores[regs] = torch.tensor([10.0, 9.0, 8.0, 7.0])  # registers rank first
    assert register_mask(feats).nonzero().flatten().tolist() == regs
    for max_registers in (0, 1, 2, 3):
        res = dedup_select(scores, feats, budget=20, tau=0.99, max_registers=max_registers)
        assert res.registers.tolist() == regs
        kept_regs = sorted(set(res.keep.tolist()) & set(regs))
        assert kept_regs == regs[:max_registers]  # the highest-scored registers
        assert res.n_filled == 0
    # Not enough non-registers: the fill step tops up with registers last.
    res = dedup_select(scores, feats, budget=n - 1, tau=0.99, max_registers=1)
    assert res.keep.numel() == n - 1 and res.n_filled == 2
    assert sorted(res.filled.tolist()) == [11, 25]


def test_register_cap_holds_on_random_cases() -> None:
    rng = random.Random(99)
    for _ in range(200):
        case = _random_case(rng)
        res = dedup_select(**case)
        n = case["scores"].numel()
        n_regs = res.registers.numel()
        if n - n_regs >= min(case["budget"], n):
            in_keep = set(res.keep.tolist()) & set(res.registers.tolist())
            assert len(in_keep) <= case["max_registers"]


def test_similar_register_does_not_use_the_cap() -> None:
    # Register A (kept) and a near copy A' (skipped as similar); register B is then still kept
    # with max_registers=2, and the cap counts only kept registers.
    torch.manual_seed(1)
    base = torch.nn.functional.normalize(torch.randn(30, 8), dim=-1)
    base[0] = base[1] = base[0] * 40
    base[2] = torch.nn.functional.normalize(torch.randn(8), dim=0) * 40
    scores = torch.linspace(1.0, 0.0, 30)
    res = dedup_select(scores, base, budget=5, tau=0.9, max_registers=2, register_sigma=2.0)
    assert res.registers.tolist() == [0, 1, 2]
    assert 0 in res.keep.tolist() and 1 not in res.keep.tolist() and 2 in res.keep.tolist()
    assert res.n_skipped_similar == 1


@pytest.mark.parametrize("tau", [1.0, 1.5])
def test_no_dedup_equals_topk(tau: float) -> None:
    torch.manual_seed(2)
    for n in (1, 5, 33, 80):
        feats = torch.randn(n, 12)
        feats[n // 2 :] = feats[0]  # exact duplicates: cosine 1 must not count as "> 1"
        feats[0] *= 100.0  # an obvious register
        scores = torch.randn(n)
        for budget in (0, 1, n // 3, n, n + 5):
            res = dedup_select(scores, feats, budget, tau=tau, max_registers=n)
            expected = torch.sort(torch.topk(scores, min(budget, n)).indices).values
            assert torch.equal(res.keep, expected)
            assert res.n_filled == 0 and res.n_skipped_similar == 0


def test_ties_break_by_lower_index() -> None:
    feats = torch.eye(6)
    scores = torch.tensor([1.0, 2.0, 2.0, 1.0, 2.0, 1.0])
    assert dedup_select(scores, feats, 2).keep.tolist() == [1, 2]
    assert dedup_select(scores, feats, 4).keep.tolist() == [0, 1, 2, 4]


def test_nan_scores_rank_last() -> None:
    feats = torch.eye(4)
    scores = torch.tensor([float("nan"), 0.1, -5.0, 0.2])
    assert dedup_select(scores, feats, 3).keep.tolist() == [1, 2, 3]


def test_chain_needs_many_iterations() -> None:
    # Points on an arc: neighbours are similar, second neighbours are not. The greedy walk keeps
    # every other point, which the fixed point only reaches after ~n/2 rounds.
    n, step = 15, 0.4
    tau = 0.9
    assert math.cos(step) > tau > math.cos(2 * step)
    angles = torch.arange(n) * step
    feats = torch.stack([angles.cos(), angles.sin()], dim=1)
    scores = torch.linspace(1.0, 0.0, n)
    res = dedup_select(scores, feats, budget=n, tau=tau, max_registers=0)
    walked = sorted(set(res.keep.tolist()) - set(res.filled.tolist()))
    assert walked == list(range(0, n, 2))
    assert res.n_filled == n - len(walked)
    # Scores reversed: the walk starts at the other end.
    res = dedup_select(scores.flip(0), feats, budget=n // 2 + 1, tau=tau)
    assert res.keep.tolist() == list(range(n - 1, -1, -2))[::-1] and res.n_filled == 0


def test_stop_at_budget_limits_skip_count() -> None:
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    feats = torch.stack([a, a, b, b, torch.tensor([0.0, 0.0, 1.0])])
    scores = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    res = dedup_select(scores, feats, budget=2)
    assert res.keep.tolist() == [0, 2]
    assert res.n_skipped_similar == 1  # token 3 comes after the stop and is never visited
    res = dedup_select(scores, feats, budget=3)
    assert res.keep.tolist() == [0, 2, 4] and res.n_skipped_similar == 2


def test_candidate_window_only_reached_by_fill() -> None:
    torch.manual_seed(3)
    feats = torch.nn.functional.normalize(torch.randn(10, 32), dim=-1)
    feats[1] = feats[0]
    feats[2] = feats[0]
    scores = torch.arange(10, 0, -1).float()  # rank == index
    full = dedup_select(scores, feats, budget=3, tau=0.9)
    assert full.keep.tolist() == [0, 3, 4] and full.n_filled == 0
    windowed = dedup_select(scores, feats, budget=3, tau=0.9, candidates=3)
    # Only tokens 0..2 are walked; the fill step then takes the best remaining scores.
    assert windowed.keep.tolist() == [0, 1, 2]
    assert windowed.n_filled == 2 and windowed.filled.tolist() == [1, 2]
    assert windowed.n_skipped_similar == 2
    windowed = dedup_select(scores, feats, budget=3, tau=0.9, candidates=4)
    assert windowed.keep.tolist() == [0, 1, 3] and windowed.filled.tolist() == [1]


def test_edge_sizes() -> None:
    empty = dedup_select(torch.zeros(0), torch.zeros(0, 4), budget=3)
    assert empty.keep.numel() == 0 and empty.registers.numel() == 0
    one = dedup_select(torch.tensor([0.3]), torch.ones(1, 4), budget=3)
    assert one.keep.tolist() == [0] and one.registers.numel() == 0
    none = dedup_select(torch.randn(5), torch.randn(5, 4), budget=0)
    assert none.keep.numel() == 0 and none.n_filled == 0
    with pytest.raises(ValueError):
        dedup_select(torch.randn(5), torch.randn(4, 4), budget=2)
    with pytest.raises(ValueError):
        dedup_select(torch.randn(5), torch.randn(5, 4), budget=-1)


def test_bfloat16_matches_float32_on_same_values() -> None:
    torch.manual_seed(4)
    feats = torch.randn(64, 16).bfloat16()
    feats[10:20] = feats[0]
    scores = torch.randn(64).bfloat16()
    for budget in (5, 20, 64):
        low = dedup_select(scores, feats, budget, tau=0.8)
        high = dedup_select(scores.float(), feats.float(), budget, tau=0.8)
        assert torch.equal(low.keep, high.keep)
        assert low.n_filled == high.n_filled and low.n_skipped_similar == high.n_skipped_similar


def test_batch_matches_per_sample() -> None:
    torch.manual_seed(5)
    scores = torch.randn(3, 50)
    feats = torch.randn(3, 50, 8)
    feats[:, 10:30] = feats[:, :1]
    budgets = [5, 25, 50]
    out = dedup_select_batch(scores, feats, budgets, tau=0.7)
    for b in range(3):
        ref = dedup_select(scores[b], feats[b], budgets[b], tau=0.7)
        assert torch.equal(out[b].keep, ref.keep) and out[b].n_filled == ref.n_filled
    # Ragged samples given as lists, and one budget for all.
    s_list = [torch.randn(7), torch.randn(30), torch.randn(1)]
    f_list = [torch.randn(7, 4), torch.randn(30, 4), torch.randn(1, 4)]
    out = dedup_select_batch(s_list, f_list, 10)
    assert [r.keep.numel() for r in out] == [7, 10, 1]
    out = dedup_select_batch(s_list, f_list, [2, 3, 4])
    assert [r.keep.numel() for r in out] == [2, 3, 1]
    with pytest.raises(ValueError):
        dedup_select_batch(s_list, f_list, [1, 2])


def test_centred_dedup_ignores_an_offset_every_token_shares() -> None:
    """A large shared component (as the massive-activation dimensions of real LMs) makes raw cosine call distinct
    tokens duplicates; after centring, deduplication is the same as without the offset."""
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(200, 32, generator=g)
    scores = torch.rand(200, generator=g)
    offset = torch.zeros(32)
    offset[5] = 60.0
    shifted = feats + offset
    raw = dedup_select(scores, shifted, 40, tau=0.9, max_registers=40, candidates=200)
    plain = dedup_select(scores, center(feats), 40, tau=0.9, max_registers=40, candidates=200)
    centred = dedup_select(scores, center(shifted), 40, tau=0.9, max_registers=40, candidates=200)
    assert raw.n_filled > 30  # nearly every token looks like every other under the offset
    assert torch.equal(centred.keep, plain.keep) and centred.n_filled == plain.n_filled < 5
    assert torch.allclose(center(shifted).mean(0), torch.zeros(32), atol=1e-4)


def _row_grid(frames: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    f = torch.arange(frames).repeat_interleave(width)
    return f, torch.zeros_like(f), torch.arange(width).repeat(frames)


def test_neighbour_features_against_a_loop() -> None:
    torch.manual_seed(0)
    f, r, c = torch.meshgrid(torch.arange(2), torch.arange(3), torch.arange(4), indexing="ij")
    f, r, c = f.flatten(), r.flatten(), c.flatten()
    x = torch.randn(24, 8)
    got = with_neighbors(x, f, r, c)
    u = torch.nn.functional.normalize(x, dim=-1)
    for i in range(24):
        near = [j for j in range(24) if j != i and f[j] == f[i] and max(abs(r[j] - r[i]), abs(c[j] - c[i])) <= 1]
        around = torch.nn.functional.normalize(u[near].sum(0), dim=0)
        assert torch.allclose(got[i], torch.cat([u[i], around]) * x[i].norm(), atol=1e-5)
    alone = with_neighbors(x[:1], f[:1], r[:1], c[:1])  # no neighbour: the token stands for its surroundings
    assert torch.allclose(alone[0], torch.cat([u[0], u[0]]) * x[0].norm(), atol=1e-6)
    # a sparse subset of the grid (tokens pruned earlier) in another order: each token keeps its own neighbours
    sub = torch.tensor([17, 3, 0, 5, 22, 12])
    near = with_neighbors(x[sub], f[sub], r[sub], c[sub])
    assert torch.allclose(near[1, :8], u[3] * x[3].norm()) and torch.allclose(near[2, 8:], u[5] * x[0].norm())
    # (0's only neighbour left is 5)
    assert with_neighbors(x[:0], f[:0], r[:0], c[:0]).shape == (0, 16)


def test_neighbor_features_keep_registers_and_survive_cancelling_neighbours() -> None:
    torch.manual_seed(0)
    f, r, c = _row_grid(2, 6)
    x = torch.randn(12, 8)
    x[4] *= 40  # a norm outlier
    got = with_neighbors(x, f, r, c)
    assert register_mask(got).tolist() == register_mask(x).tolist() == [i == 4 for i in range(12)]
    assert torch.allclose(got.norm(dim=-1), 2**0.5 * x.norm(dim=-1), rtol=1e-5)
    v = torch.randn(8)
    y = torch.stack([v, torch.randn(8), -v])  # the middle token's two neighbours cancel out
    mid = with_neighbors(y, torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), torch.arange(3))[1]
    unit = torch.nn.functional.normalize(y[1], dim=0)
    assert torch.allclose(mid, torch.cat([unit, unit]) * y[1].norm(), atol=1e-6)


def test_same_token_in_another_place_is_not_a_duplicate() -> None:
    # three frames of a row of 4; "a" appears in frames 0 and 1 between the same neighbours (a real repeat) and in
    # frame 2 between other ones (the same token, other content)
    torch.manual_seed(1)
    a, left, right, other1, other2 = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    fill = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    x = torch.stack([left, a, right, fill[0], left, a, right, fill[1], other1, a, other2, fill[2]])
    f, r, c = _row_grid(3, 4)
    scores = torch.zeros(12)
    scores[[1, 5, 9]] = torch.tensor([3.0, 2.0, 1.0])  # the walk visits the three "a" first
    plain = dedup_select(scores, x, budget=3, tau=0.9, max_registers=12)
    assert 1 in plain.keep.tolist() and 5 not in plain.keep.tolist() and 9 not in plain.keep.tolist()
    res = dedup_select(scores, with_neighbors(x, f, r, c), budget=3, tau=0.9, max_registers=12)
    assert 1 in res.keep.tolist() and 9 in res.keep.tolist()  # other surroundings: kept
    assert 5 not in res.keep.tolist()  # same surroundings: still a duplicate


def test_distinct_key_marks_what_a_second_walk_keeps() -> None:
    # six distinct directions; token 4 repeats 0 and token 5 repeats 2
    feats = torch.eye(6)
    feats[4], feats[5] = feats[0], feats[2]
    scores = torch.tensor([1.0, 5.0, 4.0, 3.0, 6.0, 2.0])
    key = distinct_key(torch.tensor([0]), scores, feats, budget=6, tau=0.9)
    # the anchor 0 walks first (whatever its score), so its copy 4 is a duplicate; 2 comes before its copy 5
    assert key.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert distinct_key(torch.tensor([0]), scores, feats, budget=2, tau=0.9).tolist() == [0, 1, 0, 0, 0, 0]
    assert (distinct_key(torch.zeros(0, dtype=torch.long), scores, feats, 6, 0.9) == 0).all()
    nan = scores.clone()
    nan[3] = float("nan")  # ranks last, like the first walk
    assert distinct_key(torch.tensor([0]), nan, feats, budget=3, tau=0.9).tolist() == [0, 1, 1, 0, 0, 0]
