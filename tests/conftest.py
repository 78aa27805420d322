from collections.abc import Iterator

import pytest

from amqscale.testing.brokers import SpecBroker

# The shipped fixtures, and the interop matrix's recorder (tests/interop_plugin.py).
pytest_plugins = ["amqscale.testing.fixtures", "interop_plugin"]


@pytest.fixture(scope="session")
def spec_broker() -> Iterator[SpecBroker]:
    """The AMQP 1.0 test broker on proton-python (`tests/peers/spec_broker.py`): queues,
    topics, durable/shared subscriptions, selectors, dynamic nodes, the anonymous relay,
    drain and local transactions; tests share it, so they use their own addresses."""
    with SpecBroker() as broker:
        yield broker
