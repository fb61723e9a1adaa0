"""Small, dependency-free statistics for the benchmark tables."""

import math
import random


def quantile(values, q):
    """Linear-interpolated quantile (the usual 'type 7'); None for no data."""
    xs = sorted(v for v in values if v is not None and not math.isnan(v))
    if not xs:
        return None
    if len(xs) == 1:
        return xs[0]
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(values):
    return quantile(values, 0.5)


def iqr(values):
    return quantile(values, 0.25), quantile(values, 0.75)


def paired_ratios(numerators, denominators):
    """Per-repeat ratios of two arms measured in the same repeat; pairs with a missing or zero
    denominator are left out."""
    return [n / d for n, d in zip(numerators, denominators)
            if n is not None and d not in (None, 0)]


def bootstrap_median_ci(values, seed, rounds=2000, level=0.95):
    """Percentile bootstrap interval of the median; None with fewer than 3 values."""
    xs = [v for v in values if v is not None]
    if len(xs) < 3:
        return None
    rng = random.Random(seed)
    medians = sorted(median([rng.choice(xs) for _ in xs]) for _ in range(rounds))
    tail = (1 - level) / 2
    return medians[int(tail * rounds)], medians[int((1 - tail) * rounds) - 1]


def jain(throughputs):
    xs = [x for x in throughputs if x is not None]
    if not xs or sum(x * x for x in xs) == 0:
        return None
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))


def mathis_mbps(mss_bytes, rtt_s, loss):
    """Mathis et al. steady-state Reno throughput, MSS/RTT * sqrt(3/2)/sqrt(p)."""
    if loss <= 0 or rtt_s <= 0:
        return None
    return mss_bytes * 8 / rtt_s * math.sqrt(1.5) / math.sqrt(loss) / 1e6


def pooled_quantile(histograms, q):
    """Quantile in ms of merged sparse histograms [(upper edge µs, count), ...]."""
    merged = {}
    for h in histograms:
        for edge, n in h:
            merged[edge] = merged.get(edge, 0) + n
    total = sum(merged.values())
    if not total:
        return None
    rank, seen = q * total, 0
    for edge in sorted(merged):
        seen += merged[edge]
        if seen >= rank:
            return edge / 1000
    return max(merged) / 1000


def longest_empty_run(bins, first):
    """Longest run of zero bins from index `first` up to the last non-zero bin (a delivery
    stall that ended); None if nothing was delivered from `first` on."""
    last = max((i for i, b in enumerate(bins) if b), default=None)
    if last is None or first > last:
        return None
    run = best = 0
    for b in bins[first:last + 1]:
        run = run + 1 if b == 0 else 0
        best = max(best, run)
    return best


def self_test():
    assert quantile([1, 2, 3, 4], 0.5) == 2.5
    assert median([5]) == 5
    assert iqr([1, 2, 3, 4, 5]) == (2, 4)
    assert quantile([], 0.5) is None
    assert paired_ratios([2, 3, None], [1, 0, 1]) == [2.0]
    assert abs(jain([1, 1]) - 1.0) < 1e-12
    assert abs(jain([1, 0]) - 0.5) < 1e-12
    ci = bootstrap_median_ci([1, 2, 3, 4, 5], seed=1)
    assert ci[0] <= 3 <= ci[1]
    assert bootstrap_median_ci([1, 2], seed=1) is None
    # Reno at 3.9 % end-to-end loss and 80 ms RTT: about 0.9 Mbit/s (testbed.md).
    assert 0.8 < mathis_mbps(1448, 0.080, 0.039) < 1.0
    # 98 packets at <= 10 µs and 2 at <= 2 ms: p99 lies in the 2 ms bucket.
    assert pooled_quantile([[(10, 50)], [(10, 48), (2000, 2)]], 0.99) == 2.0
    assert pooled_quantile([[(10, 50)], [(10, 48), (2000, 2)]], 0.5) == 0.01
    assert pooled_quantile([[]], 0.99) is None
    assert longest_empty_run([5, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 0], 0) == 3
    assert longest_empty_run([5, 0, 0, 3, 0, 0, 0, 2], 5) == 2
    assert longest_empty_run([5, 0, 0], 1) is None


if __name__ == "__main__":
    self_test()
    print("stats self-test ok")
