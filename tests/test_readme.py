"""The README's peer-to-peer example runs as written (the broker one needs a broker URL)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def test_peer_to_peer_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "listen(" in b)
    exec(compile("import amqscale\n" + example, "README.md", "exec"), {})
    assert capsys.readouterr().out.split() == ["b'hi'", "accepted"]
