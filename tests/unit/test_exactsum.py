"""Exact sums (indexer.recorders.exactsum): equal to Python-int sums, whatever the order, the
split into parts or the backend; mean and std from them; the hostile probe's "merge differs in
the last bits of std" as a test. Loads no model."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexer.recorders import FeatureRecorders, RecorderError, Stats
from indexer.recorders import exactsum as ex

BELOW = st.floats(-ex.BOUND, ex.BOUND, exclude_min=True, exclude_max=True, width=32)
ANY_SCALE = st.builds(lambda m, e: np.float32(m * 2.0**e), st.floats(-1, 1, width=32), st.integers(-60, 15))


def numpy_sums(values: np.ndarray, parts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Accumulators of ``values`` [tokens, n], folded in as ``parts`` (sizes) merged together."""
    total, total_sq = ex.zeros(values.shape[1]), ex.zeros(values.shape[1])
    start = 0
    for size in parts:
        t, s = ex.zeros(values.shape[1]), ex.zeros(values.shape[1])
        ex.add_np(t, s, values[start:start + size])
        ex.merge_np(total, t)
        ex.merge_np(total_sq, s)
        start += size
    return total, total_sq


def random_parts(draw_or_rng, n: int) -> list[int]:
    cuts = sorted(draw_or_rng.integers(0, n + 1, size=3).tolist())
    return [b - a for a, b in zip([0, *cuts], [*cuts, n])]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(BELOW, ANY_SCALE), min_size=1, max_size=60), st.integers(0, 2**32 - 1))
def test_reference_equals_python_int_sums_in_any_order_and_split(values, seed):
    x = np.array(values, np.float32)[:, None]
    rng = np.random.default_rng(seed)
    total, total_sq = numpy_sums(x, [len(x)])
    d = x[:, 0].astype(np.float64)
    assert ex.units(total) == [ex.reference_units(d)]
    assert ex.units(total_sq) == [ex.reference_units(d * d)]
    assert ex.side_np(total)[0] == 0.0 and (total[1:4] >= 0).all() and (total[1:4] <= ex.MASK).all()
    # exact, not only deterministic: every value on the 2**-64 grid sums to its real sum
    on_grid = [v for v in d.tolist() if v == 0 or abs(v) >= 2.0**-41]
    if len(on_grid) == len(d):
        assert Fraction(ex.units(total)[0], 2**64) == sum(Fraction(v) for v in on_grid)
    shuffled = x[rng.permutation(len(x))]
    again = numpy_sums(shuffled, random_parts(rng, len(x)))
    assert np.array_equal(again[0], total) and np.array_equal(again[1], total_sq)


def test_limb_split_is_v_times_2_64_rounded_toward_zero():
    v = np.array([0.0, -0.0, 1.0, -1.0, 2.0**-64, -(2.0**-64), 2.0**-80, -(2.0**-80), 65535.99609375,
                  -65535.99609375, 0.1, -0.1, 3.0 * 2**-40, -(2.0**-33), -1.5 * 2**-60], np.float64)
    a, b, c = ex.split_np(v)
    for vi, ai, bi, ci in zip(v, a, b, c):
        assert int(ai) * 2**64 + int(bi) * 2**32 + int(ci) == math.trunc(Fraction(float(vi)) * 2**64)
        assert abs(bi) <= ex.MASK and abs(ci) <= ex.MASK


def wide_batches(n_feat=16, n_batches=5, seed=0):
    """Activations spread over exponents -40..15 (both signs), varied lengths, BOS-only rows."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_batches):
        mant = rng.uniform(-1, 1, size=(4, 9, n_feat))
        acts = (mant * 2.0 ** rng.integers(-40, 16, size=mant.shape)).astype(np.float32)
        acts[:, :, 0] = 0.1  # a constant feature
        lengths = rng.integers(1, 10, size=4)
        lengths[0] = 1
        out.append((torch.from_numpy(acts), torch.from_numpy(lengths), torch.arange(4 * i, 4 * i + 4)))
    return out


def recorded(batches) -> np.ndarray:
    return np.concatenate([a[b, 1:int(n)].numpy() for a, lengths, _ in batches
                           for b, n in enumerate(lengths)], axis=0)  # [tokens, feat]


def stats_of(backend, batches, fused=False):
    rec = FeatureRecorders.create(16, (0.5,), 2, 2, 0, backend) if fused else Stats(16, backend)
    for batch in batches:
        rec.update(*batch)
    return rec.stats if fused else rec


@pytest.mark.parametrize("fused", [False, True])
def test_numba_equals_torch_bit_for_bit(fused):
    batches = wide_batches()
    a, b = stats_of("numba", batches, fused), stats_of("torch", batches)
    for name in ("count", "total", "total_sq"):
        assert np.array_equal(a._numpy(name), b._numpy(name)), name
    sa, sb = a.summary(), b.summary()
    for key in ("mean", "std"):
        assert sa[key].tobytes() == sb[key].tobytes(), key
    vals = recorded(batches)
    d = vals.astype(np.float64)
    assert ex.units(a._numpy("total")) == [ex.reference_units(d[:, f]) for f in range(16)]
    assert ex.units(a._numpy("total_sq")) == [ex.reference_units(d[:, f] ** 2) for f in range(16)]


def test_merge_does_not_differ_in_the_last_bits_of_std():
    """The hostile probe's class: shards + merge gave a std that differed from the single run
    in the last bits (float64 sums added in another order). Data where a float64 sum does
    depend on the split, and the exact sums do not, on both backends, through a state file."""
    batches = wide_batches(n_batches=6, seed=5)
    d = recorded(batches).astype(np.float64)
    head = recorded(batches[:2]).shape[0]
    split_sq = (d[:head] ** 2).sum(0) + (d[head:] ** 2).sum(0)
    assert not np.array_equal(split_sq, (d ** 2).sum(0))  # the data is hostile to float64 sums
    for backend in ("numba", "torch"):
        whole = stats_of(backend, batches).summary()
        a = stats_of(backend, batches[:2])
        b = Stats.from_state(stats_of(backend, batches[2:4]).state(), backend="torch" if backend == "numba" else "numba")
        c = stats_of(backend, batches[4:])
        c.merge(b)
        c.merge(a)
        merged = c.summary()
        for key in ("mean", "std", "n_tokens"):
            assert merged[key].tobytes() == whole[key].tobytes(), (backend, key)


def test_mean_and_std_come_from_the_exact_sums():
    vals = recorded(wide_batches(seed=2)).astype(np.float64)
    rec = Stats(16, "numba")
    for batch in wide_batches(seed=2):
        rec.update(*batch)
    s = rec.summary()
    n = len(vals)
    for f in range(16):
        exact_x = sum(Fraction(v) for v in vals[:, f])
        exact_var = sum(Fraction(v) ** 2 for v in vals[:, f]) / n - (exact_x / n) ** 2
        assert abs(Fraction(s["mean"][f]) - exact_x / n) <= Fraction(2**-60) + abs(exact_x / n) * 2**-53
        assert math.isclose(s["std"][f] ** 2, float(exact_var), rel_tol=1e-14, abs_tol=1e-30)
    np.testing.assert_allclose(s["mean"], vals.mean(0), rtol=1e-12, atol=1e-30)
    np.testing.assert_allclose(s["std"], vals.std(0), rtol=1e-9, atol=1e-30)


def test_values_beyond_the_bound_go_to_the_side_sum():
    x = np.float32([1.5, 70000.0, -3.0e6, 2.0, np.inf])
    for backend in ("numba", "torch"):
        rec = Stats(2, backend)
        acts = torch.from_numpy(np.stack([x[:4], x[1:]], axis=1))[None]  # [1, 4, 2]: BOS + 3 tokens
        rec.update(torch.cat([torch.zeros(1, 1, 2), acts], dim=1), torch.tensor([5]), torch.tensor([0]))
        total = rec._numpy("total")
        assert ex.side_np(total)[0] == np.float64(70000.0) + np.float64(-3.0e6)
        s = rec.summary()
        vals = np.float64(x[:4])
        assert s["mean"][0] == pytest.approx(vals.mean(), rel=1e-15)
        assert s["std"][0] == pytest.approx(vals.std(), rel=1e-12)
        assert s["mean"][1] == np.inf and np.isnan(s["std"][1])


def test_old_float_sums_and_oversized_batches_are_refused():
    state = Stats(3, "numba").state()
    state["total"] = np.zeros(3)
    with pytest.raises(RecorderError, match="older neuroscope"):
        Stats.from_state(state)
    with pytest.raises(RecorderError, match="smaller batch"):
        ex.check_capacity(ex.MAX_VALUES + 1)
