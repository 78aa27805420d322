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


@pytest.fixture(params=["c", "python"])
def engine_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """An in-process engine test on the worker's C hot path, then on its Python path (the
    reference, and what runs without the extension or with AMQSCALE_PURE_PYTHON=1)."""
    from amqscale.workers import engine

    if request.param == "python":
        monkeypatch.setattr(engine, "hotpath", None)
    elif engine.hotpath is None:
        pytest.skip("the C hot path is not built, or AMQSCALE_PURE_PYTHON is set")
    return str(request.param)
