"""Random and mutated frames against the decoder and the pipeline: nothing escapes, nothing is lost.

Every element of a frame is accounted for exactly once: decoded (then written to its table, or a
control message for the source), or quarantined with a reason. The pipeline half runs a real
`StreamRouter` over a real dataset and reads back the Parquet files and the quarantine.
"""

from __future__ import annotations

import calendar
import json
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.config import STREAMS, Settings, StreamName, settings_from_mapping
from ingest.metrics import Metrics
from ingest.pipeline import indicator_columns
from ingest.router import StreamRouter
from ingest.screen import quarantine_refused
from storage.parquet import open_dataset
from storage.quarantine import Quarantine
from storage.schemas import table_for
from streams.alpaca.protocol import encoding_for
from streams.base import Frame
from streams.messages import REASONS, FrameDecoder
from tests.alpaca.conftest import load_examples
from tests.dataset import count

EXAMPLES: dict[StreamName, list[dict[str, Any]]] = {s: load_examples(s) for s in STREAMS}
KEYS = sorted({key for messages in EXAMPLES.values() for m in messages for key in m})

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1e300, -1.0, 0.0, 1e16, 2**63])
    | st.text(max_size=12)
    | st.sampled_from(["2024-07-01T14:30:00Z", "1970-01-01T00:00:00Z", "2999-01-01T00:00:00Z"])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)


@st.composite
def mutated_message(draw: st.DrawFn, stream: StreamName) -> dict[str, Any]:
    """A real message of the stream, maybe with a key set, deleted or added."""
    message = dict(draw(st.sampled_from(EXAMPLES[stream])))
    for _ in range(draw(st.integers(0, 2))):
        action = draw(st.sampled_from(["set", "delete", "add", "tag"]))
        if action == "set" and message:
            message[draw(st.sampled_from(sorted(message)))] = draw(json_values)
        elif action == "delete" and message:
            del message[draw(st.sampled_from(sorted(message)))]
        elif action == "add":
            message[draw(st.sampled_from(KEYS))] = draw(json_values)
        else:
            message["T"] = draw(st.sampled_from(["t", "q", "b", "n", "o", "zz", "", "error"]))
    return message


def _timestamp_ext(value: Any) -> Any:
    """RFC 3339 strings become MessagePack Timestamp extensions, as the options stream sends."""
    if not isinstance(value, str) or not value.endswith("Z") or "T" not in value:
        return value
    whole, _, fraction = value.removesuffix("Z").partition(".")
    try:
        seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return value
    nanos = int((fraction + "000000000")[:9]) if fraction.isdigit() else 0
    return msgspec.msgpack.Ext(-1, struct.pack(">Iq", nanos, seconds))


def encode(stream: StreamName, messages: list[dict[str, Any]]) -> bytes:
    if encoding_for(stream) == "json":
        return msgspec.json.encode(messages)
    wire = [{k: _timestamp_ext(v) for k, v in m.items()} for m in messages]
    return msgspec.msgpack.encode(wire)


@st.composite
def mutated_frame(draw: st.DrawFn, stream: StreamName) -> bytes:
    """A frame of mutated real messages, maybe damaged at the byte level, or random bytes."""
    kind = draw(st.sampled_from(["messages", "bytes", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=200))
    frame = encode(stream, draw(st.lists(mutated_message(stream), min_size=1, max_size=4)))
    if kind == "bytes" and frame:
        data = bytearray(frame)
        for _ in range(draw(st.integers(1, 3))):
            position = draw(st.integers(0, len(data) - 1))
            action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
            if action == "flip":
                data[position] ^= 1 << draw(st.integers(0, 7))
            elif action == "insert":
                data[position:position] = draw(st.binary(min_size=1, max_size=4))
            elif action == "delete":
                del data[position]
            else:
                del data[position:]
            if not data:
                break
        frame = bytes(data)
    return frame


def elements(stream: StreamName, frame: bytes) -> int:
    """How many things the decoder must account for: the array's items, or the frame itself."""
    decode = msgspec.json.decode if encoding_for(stream) == "json" else msgspec.msgpack.decode
    try:
        return len(decode(frame, type=list[msgspec.Raw]))
    except (msgspec.DecodeError, ValueError):
        return 1


frames_by_stream = st.sampled_from(STREAMS).flatmap(
    lambda s: st.tuples(st.just(s), st.lists(mutated_frame(s), min_size=1, max_size=6))
)


class TestDecoder:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(frames_by_stream)
    def test_every_element_is_decoded_or_rejected_never_raised(
        self, case: tuple[StreamName, list[bytes]]
    ) -> None:
        """No exception escapes; messages plus rejects equal the frame's elements."""
        stream, frames = case
        decoder = FrameDecoder(stream, encoding_for(stream), max_bytes=150)
        for frame in frames:
            decoded = decoder.decode(frame, time.time_ns())
            if len(frame) > 150:
                assert [r.reason for r in decoded.rejects] == ["oversized_frame"]
                continue
            assert len(decoded.messages) + len(decoded.rejects) == elements(stream, frame)
            assert {r.reason for r in decoded.rejects} <= set(REASONS)


def _settings(root: Path) -> Settings:
    return settings_from_mapping(
        {"ingest": {"data_dir": str(root)}, "server": {"listen": ""}, "storage": {"roll_rows": 50}}
    )


async def run_router(stream: StreamName, frames: list[bytes], root: Path) -> tuple[int, Metrics]:
    """Deliver decoded frames to a real router and dataset; the control messages seen."""
    settings = _settings(root)
    metrics = Metrics()
    quarantine = Quarantine(root, "fuzz")
    decoder = FrameDecoder(stream, encoding_for(stream))
    control = 0
    async with open_dataset(
        root,
        settings.storage,
        writer_id="fuzz",
        metadata={},
        indicator_columns=indicator_columns(settings.pipeline),
        metrics=metrics,
        on_refused=quarantine_refused(quarantine, metrics),
    ) as dataset:
        router = StreamRouter(stream, settings, dataset, quarantine, metrics)
        async with anyio.create_task_group() as tg:
            await tg.start(router.run)
            for raw in frames:
                recv_ns = time.time_ns()
                decoded = decoder.decode(raw, recv_ns)
                control += sum(table_for(stream, type(m)) is None for m in decoded.messages)
                await router.deliver(Frame(stream, recv_ns, decoded.messages, decoded.rejects))
            router.close()
    return control, metrics


def quarantined(root: Path) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for path in sorted((root / "_quarantine").glob("**/*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


class TestPipeline:
    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(frames_by_stream)
    def test_every_element_is_written_once_or_quarantined(
        self, case: tuple[StreamName, list[bytes]]
    ) -> None:
        """Through router, pipeline and writers: rows + quarantined + control = elements."""
        stream, frames = case
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            control, metrics = anyio.run(run_router, stream, frames, root)
            tables = {
                table
                for (s, table) in (
                    (stream, t.name) for t in (root / stream).glob("*") if t.is_dir()
                )
                if table not in ("bars", "anomalies")
            }
            written = sum(count(root, stream, table) for table in tables)
            kept = quarantined(root)
            total = sum(elements(stream, frame) for frame in frames)
            assert written + len(kept) + control == total
            assert metrics.symbol_failures.get(stream) == 0
            assert sum(metrics.quarantined.values.values()) == len(kept)
            assert all(line["reason"] in REASONS for line in kept)
