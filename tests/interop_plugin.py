"""The interoperability matrix's pytest plugin: which feature works with which peer.

Mark a test that exercises a feature against a peer (one of PEERS):

    @pytest.mark.interop("send", "rhea")
    def test_sends_to_rhea(rhea_peer): ...

    @pytest.mark.parametrize("peer", [
        pytest.param("rabbitmq", marks=pytest.mark.interop("durable subscription", "rabbitmq")),
        pytest.param("rhea", marks=pytest.mark.interop("durable subscription", "rhea")),
    ])
    def test_durable_subscription(peer, interop): ...

A test may carry several interop marks (one feature against several peers, or several
features). Its outcome is the cell's: "pass"; "fail"; "skip" (not run: skipped, or never
reached); "refused" when the test called `interop.refused(reason)`: the peer refuses the
feature as its documentation says, the test has checked that amqscale raised its clear
exception for it, and then passes; "n/a" when it called `interop.not_applicable(reason)`
(which skips the test): the feature means nothing with that peer.

    def test_transactions_with_rabbitmq(rabbitmq, interop):
        with pytest.raises(amqscale.ConnectionFailed, match="amqp:not-implemented"):
            ...
        interop.refused("RabbitMQ 3.10 has no AMQP 1.0 transactions (its plugin's README)")

`--interop-results=PATH` writes every marked test's result at the end of the session,
as JSON: {"version": 1, "results": [{"feature", "peer", "outcome", "reason", "nodeid"}]};
scripts/interop_matrix.py turns it into docs/interop.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# The peers' ids, in the matrix's column order (scripts/interop_matrix.py names them).
PEERS = ("amqscale", "proton-python", "rhea", "rabbitmq", "proton-c", "spec-broker")
OUTCOMES = ("pass", "refused", "n/a", "fail", "skip")
MARKER = ("interop(feature, peer): the test exercises `feature` against `peer` (one of "
          + ", ".join(PEERS) + "); its outcome goes into the interoperability matrix "
          "(tests/interop_plugin.py, docs/interop.md)")


@dataclass
class _Outcome:
    outcome: str = "skip"
    reason: str = "not run"
    refused: str | None = None
    not_applicable: str | None = None
    ran: bool = False


_OUTCOME = pytest.StashKey[_Outcome]()
_ITEMS = pytest.StashKey[list[pytest.Item]]()


class Interop:
    """The `interop` fixture: what a marked test tells the matrix beyond pass or fail."""

    def __init__(self, item: pytest.Item) -> None:
        self._item = item
        if not marks_of(item):
            raise pytest.UsageError(f"{item.nodeid} uses the interop fixture without an "
                                    "@pytest.mark.interop(feature, peer) mark")

    def refused(self, reason: str) -> None:
        """The peer refused the feature, as it documents (`reason`: what, and where it
        says so). Call it after asserting amqscale's clear exception; the test then
        passes, and its cell reads "refused by the peer"."""
        self._item.stash[_OUTCOME].refused = _reason(reason)

    def not_applicable(self, reason: str) -> None:
        """The feature means nothing with this peer (`reason`: why): the test is skipped
        and its cell reads "not applicable"."""
        self._item.stash[_OUTCOME].not_applicable = _reason(reason)
        pytest.skip(f"not applicable: {reason}")


def _reason(reason: object) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise TypeError("interop: give the reason as a non-empty str")
    return " ".join(reason.split())


def marks_of(item: pytest.Item) -> list[tuple[str, str]]:
    """The (feature, peer) pairs of the item's interop marks, checked."""
    pairs = []
    for mark in item.iter_markers("interop"):
        args = list(mark.args) + [mark.kwargs[k] for k in ("feature", "peer") if k in mark.kwargs]
        extra = set(mark.kwargs) - {"feature", "peer"}
        if len(args) != 2 or extra or not all(isinstance(a, str) and a for a in args):
            raise pytest.UsageError(f"{item.nodeid}: interop takes (feature, peer), two "
                                    f"non-empty strs, not {mark.args!r} {mark.kwargs!r}")
        feature, peer = args
        if peer not in PEERS:
            raise pytest.UsageError(f"{item.nodeid}: interop peer {peer!r} is not one of "
                                    f"{', '.join(PEERS)}")
        if (feature, peer) not in pairs:
            pairs.append((feature, peer))
    return pairs


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("interop").addoption(
        "--interop-results", metavar="PATH", default=None,
        help="write the results of the tests marked interop(feature, peer) to PATH (JSON) "
             "for scripts/interop_matrix.py")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)
    config.stash[_ITEMS] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    marked = []
    for item in session.items:
        if marks_of(item):
            item.stash[_OUTCOME] = _Outcome()
            marked.append(item)
    session.config.stash[_ITEMS] = marked


@pytest.fixture
def interop(request: pytest.FixtureRequest) -> Interop:
    """Tells the interoperability matrix that the peer refused the feature as documented
    (`interop.refused(reason)`), or that the feature does not apply to it
    (`interop.not_applicable(reason)`). See tests/interop_plugin.py."""
    item = request.node
    if _OUTCOME not in item.stash:  # marked, but collected outside this session's list
        item.stash[_OUTCOME] = _Outcome()
    return Interop(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Any:
    report = yield
    state = item.stash.get(_OUTCOME, None)
    if state is None or state.outcome == "fail":
        return report
    state.ran = True
    if report.failed:
        state.outcome, state.reason = "fail", _failure(report)
    elif report.skipped:
        if hasattr(report, "wasxfail"):
            state.outcome, state.reason = "fail", f"expected to fail: {report.wasxfail}"
        elif state.not_applicable is not None:
            state.outcome, state.reason = "n/a", state.not_applicable
        elif report.when != "teardown":
            state.outcome, state.reason = "skip", _skip_reason(report)
    elif report.when == "call":
        if state.refused is not None:
            state.outcome, state.reason = "refused", state.refused
        else:
            state.outcome, state.reason = "pass", ""
    return report


def _failure(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    lines = text.strip().splitlines()
    first = lines[0] if lines else "failed"
    return f"{report.when}: {first}" if report.when != "call" else first


def _skip_reason(report: pytest.TestReport) -> str:
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        text = str(report.longrepr[2])
    else:
        text = str(report.longrepr)
    return text.removeprefix("Skipped: ")


def results(config: pytest.Config) -> list[dict[str, str]]:
    """One row per (marked item, feature, peer), in collection order."""
    rows = []
    for item in config.stash.get(_ITEMS, []):
        state = item.stash[_OUTCOME]
        for feature, peer in marks_of(item):
            rows.append({"feature": feature, "peer": peer, "outcome": state.outcome,
                         "reason": state.reason, "nodeid": item.nodeid})
    return rows


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("interop_results")
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"version": 1, "results": results(session.config)},
                                 indent=1) + "\n")


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    path = config.getoption("interop_results")
    if path:
        terminalreporter.write_line(f"interop: {len(results(config))} results written to "
                                    f"{path}")
