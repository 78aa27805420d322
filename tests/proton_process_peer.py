"""A proton-python peer in a process of its own, for the security tests.

Cyrus SASL's configuration in proton is per process, and a Kerberos environment differs
per peer, so each peer runs `python -c PEER`. `start_peer(config)` sends its settings as
one JSON line on stdin (secrets never on argv): role "server" (url host:port; cert and key
serve TLS, ca with them requires client certificates) or "client" (url; user, password,
allowed_mechs, virtual_host; ca verifies the server's certificate and name, cert and key
are its own). It prints one JSON line per event, exits after its one connection (or 30 s)
and `finish(peer)` returns those events.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

# A proton-python peer in its own process (Cyrus's configuration is per process). It reads
# its settings as JSON on stdin (secrets never on argv), prints one JSON line per event
# and exits after its one connection (or 30 s).
PEER = r"""
import json, sys
from proton import Message, SSLDomain
from proton.handlers import MessagingHandler
from proton.reactor import Container
config = json.loads(sys.stdin.readline())
def emit(**fields):
    print(json.dumps(fields), flush=True)
class Stop:
    def on_timer_task(self, event):
        emit(event="timeout"); event.container.stop()
class Peer(MessagingHandler):
    sent = False
    def on_start(self, event):
        event.container.schedule(30, Stop())
        if config["role"] == "server":
            domain = None
            if config.get("cert"):
                domain = SSLDomain(SSLDomain.MODE_SERVER)
                domain.set_credentials(config["cert"], config["key"], None)
                if config.get("ca"):  # client certificates required
                    domain.set_trusted_ca_db(config["ca"])
                    domain.set_peer_authentication(SSLDomain.VERIFY_PEER, config["ca"])
            self.acceptor = event.container.listen(config["url"], ssl_domain=domain)
            emit(event="listening")
            return
        options = {"reconnect": False, "allow_insecure_mechs": False}
        for key in ("user", "password", "allowed_mechs", "virtual_host"):
            if config.get(key):
                options[key] = config[key]
        if config.get("ca"):
            domain = SSLDomain(SSLDomain.MODE_CLIENT)
            domain.set_trusted_ca_db(config["ca"])
            domain.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME)
            if config.get("cert"):
                domain.set_credentials(config["cert"], config["key"], None)
            options["ssl_domain"] = domain
        conn = event.container.connect(config["url"], **options)
        event.container.create_sender(conn, "sasl-test")
    def on_connection_opened(self, event):
        sasl = event.transport.sasl()
        ssl = event.transport.ssl() if config.get("ca") or config.get("cert") else None
        emit(event="opened", user=sasl.user, mech=sasl.mech,
             **({"tls": ssl.protocol_name()} if ssl else {}))
    def on_sendable(self, event):
        if not self.sent:
            event.sender.send(Message(body="authenticated")); self.sent = True
    def on_accepted(self, event):
        emit(event="accepted"); event.connection.close()
    def on_message(self, event):
        body = event.message.body
        emit(event="message", body=body if isinstance(body, str) else bytes(body).decode())
    def on_transport_error(self, event):
        cond = event.transport.condition
        emit(event="error", name=cond and cond.name, description=cond and cond.description)
    def on_transport_closed(self, event):
        if config["role"] == "server":
            self.acceptor.close()
        event.container.stop()
Container(Peer()).run()
"""


def start_peer(config: dict[str, str], env: dict[str, str] | None = None
               ) -> subprocess.Popen[str]:
    peer = subprocess.Popen([sys.executable, "-c", PEER], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert peer.stdin is not None and peer.stdout is not None
    peer.stdin.write(json.dumps(config) + "\n")
    peer.stdin.flush()
    if config["role"] == "server":
        first = peer.stdout.readline()
        assert '"listening"' in first, f"the proton server did not start: {first!r}"
    return peer


def finish(peer: subprocess.Popen[str]) -> list[dict[str, Any]]:
    try:
        out, err = peer.communicate(timeout=60)
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait()
    assert peer.returncode == 0, err
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]
