"""Real AMQP 1.0 peers for amqscale's tests and benchmarks.

`RabbitMQ`, `ProtonCBroker` and `RheaPeer` each start one private server on loopback, on
ports picked at run time, and stop it by pid. They need the Debian packages and the rhea
install that `scripts/setup.sh` provides (see `amqscale.testing.brokers`). pytest fixtures
for them live in `amqscale.testing.fixtures` (load with
`pytest_plugins = ["amqscale.testing.fixtures"]`).

Names are loaded on first use, so that `python -m amqscale.testing.brokers` does not import
its own module twice.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from amqscale.testing._process import ManagedProcess, PeerStartError, free_port
    from amqscale.testing.brokers import (
        ProtonCBroker,
        ProtonExamples,
        RabbitMQ,
        RheaPeer,
        build_proton_examples,
    )
    from amqscale.testing.certs import Certificates, make_certificates
    from amqscale.testing.proxy import FaultProxy

_HOMES = {
    "ManagedProcess": "_process",
    "PeerStartError": "_process",
    "free_port": "_process",
    "ProtonCBroker": "brokers",
    "ProtonExamples": "brokers",
    "RabbitMQ": "brokers",
    "RheaPeer": "brokers",
    "build_proton_examples": "brokers",
    "Certificates": "certs",
    "make_certificates": "certs",
    "FaultProxy": "proxy",
}

__all__ = [
    "Certificates",
    "FaultProxy",
    "ManagedProcess",
    "PeerStartError",
    "ProtonCBroker",
    "ProtonExamples",
    "RabbitMQ",
    "RheaPeer",
    "build_proton_examples",
    "free_port",
    "make_certificates",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
