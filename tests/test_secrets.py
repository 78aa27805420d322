"""Secrets (passwords, key passwords) never show in a worker's argv or environment, in
what the processes log, in reprs, or in the text and traceback of an error."""

from __future__ import annotations

import traceback
from pathlib import Path

import psutil
import pytest

import amqscale
from amqscale import AuthenticationError, ServerSASL, TLSError
from amqscale.security import TLS
from amqscale.testing.certs import make_pki
from amqscale.url import parse_url
from amqscale.workers import protocol as p

TIMEOUT = 20
PASSWORD = "pw-Zq8rT2vX"
WRONG = "pw-wrong-K4m9"


def process_texts(pid: int) -> list[bytes]:
    """What anyone on the machine can read of a process: its argv and environment."""
    return [Path(f"/proc/{pid}/cmdline").read_bytes(), Path(f"/proc/{pid}/environ").read_bytes()]


def test_no_secret_leaks_anywhere(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                  caplog: pytest.LogCaptureFixture) -> None:
    pki = make_pki(tmp_path / "pki")
    secrets = [PASSWORD, WRONG, pki.key_password]
    texts: list[str] = []
    with amqscale.Container(workers=2) as container:
        listener = container.listen(
            "amqps://127.0.0.1:0", sasl=ServerSASL(users={"alice": PASSWORD}),
            tls=TLS(cert=pki.locked.cert, key=pki.locked.key, key_password=pki.key_password))
        url = f"amqps://alice:{PASSWORD}@localhost:{listener.port}"
        tls = TLS(ca=pki.ca, cert=pki.locked.cert, key=pki.locked.key,
                  key_password=pki.key_password)
        conn = container.connect(url, tls=tls, sasl_mechanisms="PLAIN", timeout=TIMEOUT)
        assert conn.security.user == "alice"
        texts += [repr(conn.security), repr(tls), repr(parse_url(url)), str(parse_url(url))]
        with pytest.raises(AuthenticationError) as refused:
            container.connect(url, tls=TLS(ca=pki.ca), password=WRONG, timeout=TIMEOUT)
        with pytest.raises(TLSError) as unloadable:
            container.listen("amqps://127.0.0.1:0", tls=TLS(
                cert=pki.locked.cert, key=pki.locked.key, key_password=WRONG))
        for error in (refused.value, unloadable.value):
            texts.append("".join(traceback.format_exception(error)))
        pids = container.worker_pids()
        for pid in pids:  # the workers and anything they started
            for process in [psutil.Process(pid), *psutil.Process(pid).children(True)]:
                texts += [x.decode(errors="replace") for x in process_texts(process.pid)]
        conn.close()
    wire = [p.OpenConnection(1, "h", 1, "c", user="alice", password=PASSWORD,
                             tls=tls.wire(False)),
            p.Listen(1, "h", 1, "c", tls=tls.wire(True),
                     sasl=ServerSASL(users={"alice": PASSWORD}).wire())]
    texts += [repr(x) for x in wire]
    captured = capfd.readouterr()  # the workers share this process's stdout and stderr
    texts += [captured.out, captured.err, caplog.text]
    assert len(pids) == 2 and any("PATH=" in text for text in texts)  # /proc was read
    for secret in secrets:
        leaks = [text for text in texts if secret in text]
        assert not leaks, f"a secret shows in: {leaks[0][:300]!r}"
