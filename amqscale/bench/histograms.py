"""Latency histograms: HdrHistogram (the `hdrhistogram` package) with batched recording.

Every value is in microseconds, from 1 us to one hour, at 3 significant digits. A value out
of that range is not dropped: it is counted as `out_of_range` and recorded at the nearest
end, so a histogram's total is every sample it was given (a negative latency, which clocks
out of step can give across hosts, is recorded as 0). `record_many` takes a whole batch
at once with numpy: the index arithmetic is HdrHistogram's own, vectorised, so the cost
per sample is a few nanoseconds instead of the pure-Python `record_value`'s microsecond.
Histograms travel between processes as HdrHistogram's V2 encoding (the same text Java and
C write) and merge exactly with `add`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
SIGNIFICANT_FIGURES = 3

PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)


class LatencyHistogram:
    """One HdrHistogram of microsecond samples plus the count of samples it had to clamp."""

    __slots__ = ("hdr", "out_of_range", "_counts", "_mask", "_unit", "_half_mag", "_half")

    def __init__(self, hdr: HdrHistogram | None = None, out_of_range: int = 0) -> None:
        self.hdr = hdr or HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)
        self.out_of_range = out_of_range
        self._counts = np.ctypeslib.as_array(self.hdr.counts)
        self._mask = self.hdr.sub_bucket_mask
        self._unit = self.hdr.unit_magnitude
        self._half_mag = self.hdr.sub_bucket_half_count_magnitude
        self._half = self.hdr.sub_bucket_half_count

    @property
    def count(self) -> int:
        return int(self.hdr.get_total_count())

    def record_many(self, values: np.ndarray | Sequence[int]) -> None:
        """Record every value of `values` (microseconds, int64)."""
        samples = np.asarray(values, dtype=np.int64)
        if samples.size == 0:
            return
        clamped = np.clip(samples, 0, HIGHEST_US)
        self.out_of_range += int(np.count_nonzero(clamped != samples))
        # HdrHistogram's counts index, as hdrh's _counts_index_for computes it one by one
        pow2ceiling = np.frexp((clamped | self._mask).astype(np.float64))[1]
        bucket = pow2ceiling - self._unit - (self._half_mag + 1)
        sub_bucket = clamped >> (bucket + self._unit)
        index = ((bucket + 1) << self._half_mag) + (sub_bucket - self._half)
        if index.size * 8 < self._counts.size:  # a small batch: touch only its counters
            np.add.at(self._counts, index, 1)
        else:
            self._counts += np.bincount(index, minlength=self._counts.size).astype(
                self._counts.dtype)
        hdr = self.hdr
        hdr.total_count += int(samples.size)
        hdr.min_value = min(hdr.min_value, int(clamped.min()))
        hdr.max_value = max(hdr.max_value, int(clamped.max()))

    def record_repeated(self, value: int, count: int) -> None:
        """Record `value` `count` times (in range: clamped like record_many)."""
        if not count:
            return
        clamped = min(max(value, 0), HIGHEST_US)
        if clamped != value:
            self.out_of_range += count
        self.hdr.record_value(clamped, count)

    def add(self, other: LatencyHistogram) -> None:
        if other.count:
            self.hdr.add(other.hdr)
        self.out_of_range += other.out_of_range

    def encode(self) -> dict[str, Any]:
        """A form for pipes, JSON and Dask: HdrHistogram's base64 V2 text and the clamps."""
        return {"hdr": self.hdr.encode().decode("ascii"), "out_of_range": self.out_of_range}

    @classmethod
    def decode(cls, encoded: dict[str, Any]) -> LatencyHistogram:
        histogram = cls(out_of_range=int(encoded["out_of_range"]))
        histogram.hdr.decode_and_add(encoded["hdr"].encode("ascii"))
        return histogram

    @classmethod
    def merged(cls, histograms: Iterable[LatencyHistogram]) -> LatencyHistogram:
        total = cls()
        for histogram in histograms:
            total.add(histogram)
        return total

    def percentile(self, percentile: float) -> int:
        """hdrh's get_value_at_percentile, on the whole counts array at once."""
        return self.percentiles([percentile])[0]

    def percentiles(self, percentiles: Sequence[float]) -> list[int]:
        total = self.count
        if not total:
            return [0] * len(percentiles)
        _, highest, _ = _value_tables(self.hdr)
        running = np.cumsum(self._counts, dtype=np.int64)
        wanted = [max(int(min(p, 100.0) * total / 100 + 0.5), 1) for p in percentiles]
        return [int(highest[index]) if p else self.min() for p, index in
                zip(percentiles, np.searchsorted(running, wanted, side="left"), strict=True)]

    def max(self) -> int:
        return int(self.hdr.get_max_value()) if self.count else 0

    def count_above(self, us: int) -> int:
        """How many samples were at or above `us`, to the histogram's resolution (the
        samples that share `us`'s bucket count too)."""
        _, highest, _ = _value_tables(self.hdr)
        return int(self._counts[highest >= us].sum())

    def min(self) -> int:
        return int(self.hdr.get_min_value()) if self.count else 0

    def mean(self) -> float:
        """hdrh's get_mean_value (each count at its bucket's middle), vectorised."""
        if not self.count:
            return 0.0
        _, _, middle = _value_tables(self.hdr)
        return float(np.dot(self._counts.astype(np.float64), middle) / self.count)

    def summary(self) -> dict[str, float | int]:
        """count, min, mean, the percentiles of PERCENTILES ("p50" ... "p99.99") and max."""
        out: dict[str, float | int] = {"count": self.count, "min": self.min(),
                                       "mean": round(self.mean(), 1)}
        for percentile, value in zip(PERCENTILES, self.percentiles(PERCENTILES), strict=True):
            out[f"p{percentile:g}"] = value
        out["max"] = self.max()
        out["out_of_range"] = self.out_of_range
        return out


_TABLES: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _value_tables(hdr: HdrHistogram) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each counts index of `hdr`'s layout: its lowest, highest and middle equivalent
    values, from hdrh's own functions (made once per layout, a few hundred ms)."""
    layout = (hdr.lowest_trackable_value, hdr.highest_trackable_value,
              hdr.significant_figures)
    tables = _TABLES.get(layout)
    if tables is None:
        lowest = [hdr.get_value_from_index(i) for i in range(hdr.counts_len)]
        highest = [hdr.get_highest_equivalent_value(v) for v in lowest]
        middle = [hdr._hdr_median_equiv_value(v) for v in lowest]
        tables = _TABLES[layout] = (np.array(lowest, dtype=np.int64),
                                    np.array(highest, dtype=np.int64),
                                    np.array(middle, dtype=np.float64))
    return tables
