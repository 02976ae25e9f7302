"""The latency histogram: bucket bounds, quantile precision, merging."""

from __future__ import annotations

import random

from paxoskv.bench.histogram import SUB_BITS, Histogram, bucket_bounds, bucket_of


def test_every_value_lands_in_a_bucket_whose_bounds_contain_it():
    rng = random.Random(7)
    values = list(range(0, 5000)) + [rng.randrange(1 << 40) for _ in range(5000)]
    for v in values:
        low, high = bucket_bounds(bucket_of(v))
        assert low <= v <= high, (v, low, high)
        assert high - low <= max(0, low >> (SUB_BITS - 1)), (v, low, high)


def test_buckets_are_ordered_like_values():
    prev = -1
    for v in range(0, 1 << 16, 7):
        b = bucket_of(v)
        assert b >= prev
        prev = b


def test_quantiles_are_within_the_bucket_precision_of_the_exact_ones():
    rng = random.Random(3)
    values = [int(rng.lognormvariate(14, 1.0)) for _ in range(20_000)]  # ~1 ms, ns
    h = Histogram()
    for v in values:
        h.record(v)
    exact = sorted(values)
    for q in (0.5, 0.95, 0.99):
        want = exact[int(q * len(exact)) - 1]
        got = h.quantile(q)
        assert abs(got - want) <= want / 2 ** (SUB_BITS - 1) + 1, (q, got, want)
    assert h.quantile(1.0) == max(values) == h.max
    assert h.min == min(values)
    assert h.count == len(values)


def test_merge_is_the_histogram_of_the_union():
    rng = random.Random(5)
    a_vals = [rng.randrange(10**9) for _ in range(3000)]
    b_vals = [rng.randrange(10**6) for _ in range(2000)]
    a, b, both = Histogram(), Histogram(), Histogram()
    for v in a_vals:
        a.record(v)
        both.record(v)
    for v in b_vals:
        b.record(v)
        both.record(v)
    a.merge(b)
    assert a == both
    empty = Histogram()
    empty.merge(Histogram())
    assert empty.count == 0 and empty.quantile(0.5) == 0


def test_a_value_recorded_many_times_is_that_many_records():
    once, many = Histogram(), Histogram()
    for v in (5, 900, 77_000):
        for _ in range(100):
            once.record(v)
        many.record(v, 100)
    assert many == once
