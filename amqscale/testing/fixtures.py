"""pytest fixtures for the real peers; load with `pytest_plugins = ["amqscale.testing.fixtures"]`.

Each peer is started once per session, only when a test first asks for it (a RabbitMQ start
costs seconds), and stopped at the session's end. Tests share the peer, so they must use
their own queue/address names (`unique_name`). A peer that cannot start fails the tests
that need it with the start error (log path included); it is not skipped, so a machine
without the peers' packages cannot pass silently.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from amqscale.testing.brokers import ProtonCBroker, RabbitMQ, RheaPeer
from amqscale.testing.certs import PKI, make_pki


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQ]:
    """A private RabbitMQ node with AMQP 1.0, TLS and PLAIN users (see `RabbitMQ`)."""
    with RabbitMQ() as broker:
        yield broker


@pytest.fixture(scope="session")
def proton_c_broker() -> Iterator[ProtonCBroker]:
    """The Proton C example broker with a credit window of 1000."""
    with ProtonCBroker() as broker:
        yield broker


@pytest.fixture(scope="session")
def rhea_peer() -> Iterator[RheaPeer]:
    """A rhea sink/source that records the first 1000 ids and bodies of each address."""
    with RheaPeer(record=1000) as peer:
        yield peer


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A test PKI: a CA, server certificates good, expired, wrong-named and untrusted,
    client certificates, a key under a password (see `amqscale.testing.certs.PKI`)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A queue/address/link name no other test uses: the test's name plus random hex."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40]
    return f"{base}-{secrets.token_hex(4)}"
