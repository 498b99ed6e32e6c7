"""Process metrics: counters, gauges and histograms rendered as Prometheus text.

Deliberately tiny (no client library): the daemon updates plain dicts on its hot paths, and
`/metrics` renders them on demand. Label values are given positionally, in the order declared.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import numpy as np

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["Counter", "Gauge", "Histogram", "Metrics"]

Labels = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Labels, values: Labels, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


@dataclass(slots=True)
class _Sample:
    """One number per label set; counters and gauges differ only in how it changes."""

    name: str
    help: str
    label_names: Labels = ()
    values: dict[Labels, float] = field(default_factory=dict)
    kind = "untyped"

    def get(self, *labels: str) -> float:
        """The current value for this label set (0 if never touched)."""
        return self.values.get(labels, 0.0)

    def render(self) -> list[str]:
        """Prometheus exposition lines."""
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        lines += [
            f"{self.name}{_labels(self.label_names, k)} {_number(v)}"
            for k, v in sorted(self.values.items())
        ]
        return lines


@dataclass(slots=True)
class Counter(_Sample):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        """Add `amount` for this label set."""
        self.values[labels] = self.values.get(labels, 0.0) + amount


@dataclass(slots=True)
class Gauge(_Sample):
    """A value that goes up and down per label set."""

    kind = "gauge"

    def set(self, value: float, *labels: str) -> None:
        """Set the value for this label set."""
        self.values[labels] = value


LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
FAST_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""For in-process latencies, which should stay near a millisecond."""


@dataclass(slots=True)
class Histogram:
    """Cumulative-bucket histogram per label set (seconds by default)."""

    name: str
    help: str
    label_names: Labels = ()
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: dict[Labels, list[int]] = field(default_factory=dict)
    sums: dict[Labels, float] = field(default_factory=dict)
    maxima: dict[Labels, float] = field(default_factory=dict)

    def observe(self, value: float, *labels: str, count: int = 1) -> None:
        """Record `count` observations of `value`."""
        slots = self.counts.get(labels)
        if slots is None:
            slots = self.counts[labels] = [0] * (len(self.buckets) + 1)
            self.sums[labels] = 0.0
            self.maxima[labels] = value
        slots[bisect.bisect_left(self.buckets, value)] += count
        self.sums[labels] += value * count
        if value > self.maxima[labels]:
            self.maxima[labels] = value

    def quantile(self, q: float, *labels: str) -> float:
        """Estimate the q-quantile as Prometheus' `histogram_quantile` does, capped by the max."""
        slots = self.counts.get(labels)
        if not slots:
            return math.nan
        rank = q * sum(slots)
        running = 0
        lower = 0.0
        for bound, n in zip((*self.buckets, math.inf), slots, strict=True):
            if n and running + n >= rank:
                upper = min(bound, self.maxima[labels])
                return lower + (upper - lower) * max(rank - running, 0) / n
            running += n
            lower = bound
        return self.maxima[labels]

    def observe_many(
        self,
        values: npt.NDArray[np.float64],
        *labels: str,
        counts: npt.NDArray[np.intp] | None = None,
    ) -> None:
        """Record every value of an array, `counts[i]` times each if given (one bucket search)."""
        if not len(values):
            return
        slots = self.counts.get(labels)
        if slots is None:
            slots = self.counts[labels] = [0] * (len(self.buckets) + 1)
            self.sums[labels] = 0.0
        found = np.searchsorted(np.asarray(self.buckets), values, side="left")
        tally = np.bincount(found, counts, minlength=len(slots))
        for index, n in enumerate(tally.astype(np.int64).tolist()):
            slots[index] += n
        self.sums[labels] += float(values.sum() if counts is None else values @ counts)
        top = float(values.max())
        if top > self.maxima.get(labels, -math.inf):
            self.maxima[labels] = top

    def render(self) -> list[str]:
        """Prometheus exposition lines."""
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, slots in sorted(self.counts.items()):
            running = 0
            for bound, n in zip((*self.buckets, math.inf), slots, strict=True):
                running += n
                le = f'le="{_number(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {self.sums[key]!r}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {running}")
        return lines


@dataclass(slots=True)
class Metrics:
    """Every metric the daemon exports."""

    messages: Counter = field(
        default_factory=lambda: Counter(
            "ingest_messages_total", "Data messages received.", ("stream", "table")
        )
    )
    rows: Counter = field(
        default_factory=lambda: Counter(
            "ingest_rows_written_total", "Rows sealed into Parquet.", ("stream", "table")
        )
    )
    quarantined: Counter = field(
        default_factory=lambda: Counter(
            "ingest_quarantined_total", "Messages quarantined, by reason.", ("stream", "reason")
        )
    )
    symbol_failures: Counter = field(
        default_factory=lambda: Counter(
            "ingest_symbol_failures_total",
            "Exceptions in a symbol's pipeline (state rebuilt).",
            ("stream",),
        )
    )
    dropped: Counter = field(
        default_factory=lambda: Counter(
            "ingest_dropped_total",
            "Messages dropped by the drop backpressure policy, or that waited for a stuck journal"
            " past the 30 s grace.",
            ("stream",),
        )
    )
    corrections: Counter = field(
        default_factory=lambda: Counter(
            "ingest_corrections_total",
            "Trade corrections and cancels, by what they did to the bars (ingest.corrections).",
            ("stream", "kind", "applied"),
        )
    )
    reconnects: Counter = field(
        default_factory=lambda: Counter(
            "ingest_reconnects_total", "Reconnects of a stream's connection.", ("stream",)
        )
    )
    storage_errors: Counter = field(
        default_factory=lambda: Counter(
            "ingest_storage_errors_total",
            "Failed Parquet seals and journal appends (table _journal), retried.",
            ("stream", "table"),
        )
    )
    deduplicated: Counter = field(
        default_factory=lambda: Counter(
            "ingest_deduplicated_total",
            "Messages and pipeline rows dropped because the dataset already held their keys.",
            ("stream", "table"),
        )
    )
    journal_segments: Gauge = field(
        default_factory=lambda: Gauge(
            "ingest_journal_segments",
            "Journal segments on disk, not yet covered by sealed Parquet files.",
            ("stream",),
        )
    )
    recovered: Counter = field(
        default_factory=lambda: Counter(
            "ingest_journal_recovered_frames_total",
            "Frames replayed from the journal at start after an unclean stop.",
            ("stream",),
        )
    )
    torn_tails: Counter = field(
        default_factory=lambda: Counter(
            "ingest_journal_torn_tails_total",
            "Journal segments whose half-written last batch was cut at recovery.",
            ("stream",),
        )
    )
    queue_depth: Gauge = field(
        default_factory=lambda: Gauge(
            "ingest_queue_depth", "Batches waiting in a stream's symbol queues.", ("stream",)
        )
    )
    intake_depth: Gauge = field(
        default_factory=lambda: Gauge(
            "ingest_intake_depth",
            "Frames waiting in a stream's intake for the journal"
            " (bound: storage.queue_size, scaled up beyond 4,096 symbols).",
            ("stream",),
        )
    )
    writer_buffered: Gauge = field(
        default_factory=lambda: Gauge(
            "ingest_writer_buffered_rows",
            "Rows buffered in a table writer, not yet sealed (bound: 4 x storage.roll_rows).",
            ("stream", "table"),
        )
    )
    source_blocked: Counter = field(
        default_factory=lambda: Counter(
            "ingest_source_blocked_seconds_total",
            "Seconds a source (the socket reader) waited to hand a frame on: backpressure.",
            ("stream",),
        )
    )
    connected: Gauge = field(
        default_factory=lambda: Gauge(
            "ingest_stream_connected", "1 when the stream's source is connected.", ("stream",)
        )
    )
    latency: Histogram = field(
        default_factory=lambda: Histogram(
            "ingest_latency_seconds",
            "Exchange timestamp to pipeline output, per stream.",
            ("stream",),
        )
    )
    pipeline_latency: Histogram = field(
        default_factory=lambda: Histogram(
            "ingest_pipeline_latency_seconds",
            "Receipt of a symbol batch's oldest message to the batch's pipeline output.",
            ("stream",),
            FAST_BUCKETS,
        )
    )
    seal_latency: Histogram = field(
        default_factory=lambda: Histogram(
            "ingest_seal_latency_seconds",
            "Receive time to the Parquet file holding the row being sealed.",
            ("stream", "table"),
        )
    )
    backfilled: Counter = field(
        default_factory=lambda: Counter(
            "ingest_backfilled_rows_total",
            "Rows recovered through REST history after a gap (after de-duplication).",
            ("stream", "table"),
        )
    )
    backfill_failures: Counter = field(
        default_factory=lambda: Counter(
            "ingest_backfill_failures_total",
            "Gaps whose REST back-fill gave up (requests kept failing); see the logs.",
            ("stream",),
        )
    )
    live_clients: Gauge = field(
        default_factory=lambda: Gauge("ingest_live_clients", "Connected /live WebSocket clients.")
    )
    live_dropped: Counter = field(
        default_factory=lambda: Counter(
            "ingest_live_clients_dropped_total",
            "/live clients disconnected because their send buffer overflowed.",
        )
    )
    live_bars: Counter = field(
        default_factory=lambda: Counter(
            "ingest_live_bars_published_total", "Closed bars published to /live.", ("stream",)
        )
    )

    def render(self) -> str:
        """All metrics in Prometheus text exposition format."""
        lines: list[str] = []
        for metric in (
            self.messages,
            self.rows,
            self.quarantined,
            self.symbol_failures,
            self.dropped,
            self.corrections,
            self.reconnects,
            self.storage_errors,
            self.deduplicated,
            self.journal_segments,
            self.recovered,
            self.torn_tails,
            self.queue_depth,
            self.intake_depth,
            self.writer_buffered,
            self.source_blocked,
            self.connected,
            self.latency,
            self.pipeline_latency,
            self.seal_latency,
            self.backfilled,
            self.backfill_failures,
            self.live_clients,
            self.live_dropped,
            self.live_bars,
        ):
            lines += metric.render()
        return "\n".join(lines) + "\n"
