"""Real AMQP 1.0 peers for amqscale's tests and benchmarks.

`RabbitMQ`, `ProtonCBroker` and `RheaPeer` each start one private server on loopback, on
ports picked at run time, and stop it by pid. They need the Debian packages and the rhea
install that `scripts/setup.sh` provides (see `amqscale.testing.brokers`). pytest fixtures
for them live in `amqscale.testing.fixtures` (load with
`pytest_plugins = ["amqscale.testing.fixtures"]`).
"""

from amqscale.testing._process import ManagedProcess, PeerStartError, free_port
from amqscale.testing.brokers import (
    ProtonCBroker,
    ProtonExamples,
    RabbitMQ,
    RheaPeer,
    build_proton_examples,
)
from amqscale.testing.certs import Certificates, make_certificates

__all__ = [
    "Certificates",
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
