from __future__ import annotations

from collections import deque
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.pipeline.windows import RingBuffer, RunningStats, windowed


class TestRingBuffer:
    def test_keeps_the_last_capacity_values_oldest_first(self) -> None:
        """Appending past capacity evicts the oldest values."""
        ring = RingBuffer(3)
        for value in range(5):
            ring.append(float(value))
        assert ring.view().tolist() == [2.0, 3.0, 4.0]
        assert (ring[0], ring[-1]) == (2.0, 4.0)

    def test_warm_up_is_visible(self) -> None:
        """`full` turns true with the capacity-th value; the view grows until then."""
        ring = RingBuffer(3)
        ring.append(1.0)
        assert not ring.full
        assert ring.view().tolist() == [1.0]
        ring.extend(np.array([2.0, 3.0]))
        assert ring.full
        assert len(ring) == 3

    def test_extend_longer_than_capacity_keeps_the_tail(self) -> None:
        """A batch larger than the window leaves only its last values."""
        ring = RingBuffer(4)
        ring.append(-1.0)
        ring.extend(np.arange(10.0))
        assert ring.view().tolist() == [6.0, 7.0, 8.0, 9.0]

    def test_view_is_read_only(self) -> None:
        """The view aliases the buffer, so writing through it is refused."""
        ring = RingBuffer(2)
        ring.append(1.0)
        with pytest.raises(ValueError, match="read-only"):
            ring.view()[0] = 5.0

    def test_index_out_of_range(self) -> None:
        """Indexing past the values held raises IndexError."""
        ring = RingBuffer(3)
        ring.append(1.0)
        with pytest.raises(IndexError, match="out of range"):
            ring[1]

    def test_capacity_must_be_positive(self) -> None:
        """A zero-length window is a configuration bug."""
        with pytest.raises(ValueError, match="capacity must be >= 1"):
            RingBuffer(0)

    @given(
        st.integers(1, 8),
        st.lists(st.lists(st.floats(-1e6, 1e6), max_size=12), max_size=12),
    )
    def test_matches_a_bounded_deque(self, capacity: int, batches: list[list[float]]) -> None:
        """Any mix of append and extend agrees with `deque(maxlen=capacity)`."""
        ring = RingBuffer(capacity)
        reference: deque[float] = deque(maxlen=capacity)
        for batch in batches:
            if len(batch) == 1:
                ring.append(batch[0])
            else:
                ring.extend(np.array(batch, dtype=np.float64))
            reference.extend(batch)
            assert ring.view().tolist() == list(reference)


class TestWindowed:
    def test_size_and_stride(self) -> None:
        """Rows are windows of `size` starting every `stride` values."""
        rows = windowed(np.arange(7.0), size=3, stride=2)
        assert rows.tolist() == [[0, 1, 2], [2, 3, 4], [4, 5, 6]]

    def test_is_a_view(self) -> None:
        """No copy: the windows share memory with the input."""
        values = np.arange(5.0)
        assert np.shares_memory(windowed(values, 2), values)

    def test_too_short_gives_no_rows(self) -> None:
        """Fewer values than one window: an empty (0, size) array."""
        assert windowed(np.arange(2.0), 3).shape == (0, 3)

    def test_rejects_bad_sizes(self) -> None:
        """Size and stride below one are errors."""
        with pytest.raises(ValueError, match="size and stride must be >= 1"):
            windowed(np.arange(3.0), 0)


def _exact_stats(values: list[float]) -> tuple[float, float]:
    exact = [Fraction(v) for v in values]
    mean = sum(exact, Fraction(0)) / len(exact)
    variance = sum(((v - mean) ** 2 for v in exact), Fraction(0)) / len(exact)
    return float(mean), float(variance)


class TestRunningStats:
    def test_basic_moments(self) -> None:
        """Count, mean, population and sample variance, min and max of a small series."""
        stats = RunningStats()
        for value in (2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0):
            stats.push(value)
        assert (stats.count, stats.mean, stats.variance, stats.std) == (8, 5.0, 4.0, 2.0)
        assert stats.sample_variance == pytest.approx(32 / 7)
        assert (stats.minimum, stats.maximum) == (2.0, 9.0)

    def test_undefined_before_data(self) -> None:
        """No values, no variance: None rather than a made-up zero."""
        stats = RunningStats()
        assert (stats.variance, stats.sample_variance, stats.std) == (None, None, None)

    def test_stable_over_millions_of_values_with_a_large_offset(self) -> None:
        """3 million prices near 1e9 moving by cents keep their variance to 1e-9 relative.

        The naive E[x^2] - E[x]^2 on the same data is wrong in every digit, which shows the
        test can tell the difference.
        """
        rng = np.random.default_rng(3)
        offset = 1e9
        pattern = np.round(rng.normal(0.0, 0.05, 1000), 2)
        stats = RunningStats()
        naive_sum = naive_sq = 0.0
        for _ in range(3000):
            chunk = offset + pattern
            stats.push_many(chunk)
            naive_sum += float(chunk.sum())
            naive_sq += float(np.square(chunk).sum())
        mean, variance = _exact_stats((offset + pattern).tolist())
        assert stats.count == 3_000_000
        assert stats.mean == pytest.approx(mean, rel=1e-15)
        assert stats.variance == pytest.approx(variance, rel=1e-9)
        naive = naive_sq / stats.count - (naive_sum / stats.count) ** 2
        assert naive != pytest.approx(variance, rel=1e-2)

    def test_single_pushes_with_a_large_offset(self) -> None:
        """One value at a time (Welford's update) is as stable as batches."""
        values = [1e9 + 0.01 * (i % 7) for i in range(200_000)]
        stats = RunningStats()
        for value in values:
            stats.push(value)
        mean, variance = _exact_stats(values)
        assert stats.mean == pytest.approx(mean, rel=1e-15)
        assert stats.variance == pytest.approx(variance, rel=1e-7)

    @given(
        st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=50),
        st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=50),
    )
    def test_merge_equals_one_pass(self, left: list[float], right: list[float]) -> None:
        """Two accumulators merged agree with one that saw everything."""
        a, b, both = RunningStats(), RunningStats(), RunningStats()
        a.push_many(np.array(left))
        b.push_many(np.array(right))
        both.push_many(np.array(left + right))
        a.merge(b)
        assert a.count == both.count
        assert a.mean == pytest.approx(both.mean, rel=1e-9, abs=1e-9)
        assert a.variance == pytest.approx(both.variance, rel=1e-9, abs=1e-6)
        assert (a.minimum, a.maximum) == (min(left + right), max(left + right))
