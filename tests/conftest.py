from collections.abc import Iterator

import pytest

from amqscale.testing.brokers import SpecBroker

pytest_plugins = ["amqscale.testing.fixtures"]


@pytest.fixture(scope="session")
def spec_broker() -> Iterator[SpecBroker]:
    """The AMQP 1.0 test broker on proton-python (`tests/peers/spec_broker.py`): queues,
    topics, durable/shared subscriptions, selectors, dynamic nodes, the anonymous relay,
    drain and local transactions; tests share it, so they use their own addresses."""
    with SpecBroker() as broker:
        yield broker
