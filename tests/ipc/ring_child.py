"""The other process in the multi-process ring tests, run as ``python ring_child.py MODE ...``.

Modes:
  stress HANDLES COUNT SEED   attach as writer, write COUNT checked records, then exit
  echo PAIR_HANDLES           attach a RingPair, send back every record until an empty one
  hold-writer HANDLES COUNT   attach as writer, write COUNT records, then sleep
  hold-reader HANDLES         attach as reader, never read, sleep
  write-when-parked HANDLES   attach as writer, wait for the reader to park, write, sleep
  segments N                  create N segments (and one ring), then sleep
  named-segment               create a segment whose name is kept, exit normally

A holding child prints ``ready`` once it is attached, so the parent knows its pid is in
the header before it kills it.
"""

from __future__ import annotations

import random
import struct
import sys
import time
import zlib

from amqscale.ipc.ring import RingHandles, RingPair, RingPairHandles, RingReader, RingWriter
from amqscale.ipc.segment import Segment

STRESS_HEADER = struct.Struct("<QI")
"""A stress record: sequence number, crc32 of the payload that follows."""
MAX_STRESS_PAYLOAD = 300


def stress_record(seq: int, rng: random.Random) -> bytes:
    """Sequence number, checksum, then a payload of 0..MAX_STRESS_PAYLOAD random bytes."""
    payload = rng.randbytes(rng.randrange(MAX_STRESS_PAYLOAD + 1))
    return STRESS_HEADER.pack(seq, zlib.crc32(payload)) + payload


def stress(handles: str, count: int, seed: int) -> None:
    """Write ``count`` records, mixing single blocking writes and batches of varied length."""
    rng = random.Random(seed)
    with RingWriter.attach(RingHandles.decode(handles)) as writer:
        seq = 0
        while seq < count:
            end = min(count, seq + rng.randrange(1, 200))
            batch = [stress_record(s, rng) for s in range(seq, end)]
            if len(batch) == 1:
                writer.write(batch[0], timeout=60)
            else:
                done = writer.write_batch(batch)
                for record in batch[done:]:
                    writer.write(record, timeout=60)
            seq += len(batch)


def echo(handles: str) -> None:
    """Return every inbound record on the outbound ring, until an empty record arrives."""
    with RingPair.attach(RingPairHandles.decode(handles)) as pair:
        while True:
            pair.inbound.wait(timeout=60)
            for record in pair.inbound.read_batch():
                if not record:
                    return
                pair.outbound.write(record, timeout=60)


def hold_writer(handles: str, count: int) -> None:
    writer = RingWriter.attach(RingHandles.decode(handles))
    for seq in range(count):
        writer.write(seq.to_bytes(8, "little"), timeout=60)
    ready_then_sleep()


def hold_reader(handles: str) -> None:
    RingReader.attach(RingHandles.decode(handles))
    ready_then_sleep()


def write_when_parked(handles: str) -> None:
    """One write, once the reader sleeps: only the eventfd can wake it (this child stays)."""
    writer = RingWriter.attach(RingHandles.decode(handles))
    while not writer.reader_parked():
        time.sleep(0.001)
    writer.try_write(b"wake up")
    ready_then_sleep()


def segments(count: int) -> None:
    kept: list[object] = [Segment.create(4096) for _ in range(count)]
    kept.append(RingWriter.create(1 << 16))
    ready_then_sleep()


def named_segment() -> None:
    segment = Segment.create(4096, unlink_at_once=False)
    print(segment.name, flush=True)
    # No close(): interpreter exit must remove the name.


def ready_then_sleep() -> None:
    print("ready", flush=True)
    time.sleep(120)


def main(argv: list[str]) -> None:
    mode, args = argv[0], argv[1:]
    if mode == "stress":
        stress(args[0], int(args[1]), int(args[2]))
    elif mode == "echo":
        echo(args[0])
    elif mode == "hold-writer":
        hold_writer(args[0], int(args[1]))
    elif mode == "hold-reader":
        hold_reader(args[0])
    elif mode == "write-when-parked":
        write_when_parked(args[0])
    elif mode == "segments":
        segments(int(args[0]))
    elif mode == "named-segment":
        named_segment()
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
