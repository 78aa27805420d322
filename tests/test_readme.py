"""The README's peer-to-peer and firehose examples run as written (the broker one needs a
broker URL)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from support import ChildReceiver

import amqscale

README = Path(__file__).resolve().parent.parent / "README.md"


def test_peer_to_peer_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "listen(" in b)
    exec(compile("import amqscale\n" + example, "README.md", "exec"), {})
    assert capsys.readouterr().out.split() == ["b'hi'", "accepted"]


def test_asyncio_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "amqscale.aio" in b)
    exec(compile(example, "README.md", "exec"), {})
    assert capsys.readouterr().out.split() == ["b'hi'", "accepted"]


def test_event_driven_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "amqscale.reactor" in b)
    exec(compile(example, "README.md", "exec"), {})
    assert capsys.readouterr().out.split("\n")[0] == "Hello World!"


def test_firehose_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "send_many(" in b)
    sink = ChildReceiver(None, "firehose", 300)  # takes and accepts what the example sends
    try:
        with amqscale.Container(workers=1) as container:
            sender = container.connect(sink.url).open_sender("firehose")
            listener = container.listen("amqp://127.0.0.1:0")
            feeder = container.connect(listener.url).open_sender("in")
            fed = feeder.send_many([b"in-%d" % i for i in range(5)])
            names: dict[str, Any] = {"sender": sender, "receiver": listener.receiver,
                                     "bodies": [b"%d" % i for i in range(300)]}
            exec(compile(example, "README.md", "exec"), names)
            assert names["trackers"].accepted and len(names["trackers"]) == 300
            taken = len(names["deliveries"])
            assert 1 <= taken <= 5
            fed[:taken][-1].wait(30)
            assert [t.outcome for t in fed[:taken]] == ["accepted"] * taken
        assert len(sink.result().ids) == 300
    finally:
        sink.close()
