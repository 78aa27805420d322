"""tests/interop_plugin.py and scripts/interop_matrix.py, on test files of their own run by
pytester: each outcome reaches the results and the matrix, parametrized peers each get
their cell, misuse is an error, and --check tells a stale docs/interop.md."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import interop_plugin
import pytest

pytest_plugins = ["pytester"]

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "interop_matrix.py"

TESTS = '''
import pytest

@pytest.mark.interop("send", "rhea")
def test_passes():
    pass

@pytest.mark.interop("transactions", "rabbitmq")
def test_refused(interop):
    with pytest.raises(NotImplementedError):
        raise NotImplementedError("amqp:not-implemented")
    interop.refused("RabbitMQ 3.10 has no AMQP 1.0 transactions (its plugin's README)")

@pytest.mark.interop("receive", "proton-c")
def test_fails():
    assert 1 == 2, "the broker dropped it"

@pytest.mark.interop("receive", "rhea")
def test_skipped():
    pytest.skip("rhea is not installed")

@pytest.mark.parametrize("peer", [
    pytest.param("rhea", marks=pytest.mark.interop("durable subscription", "rhea")),
    pytest.param("spec-broker",
                 marks=pytest.mark.interop("durable subscription", "spec-broker")),
    pytest.param("amqscale", marks=pytest.mark.interop("durable subscription", "amqscale")),
])
def test_each_peer(peer, interop):
    if peer == "rhea":
        interop.refused("rhea's peer keeps no subscriptions")
    if peer == "amqscale":
        interop.not_applicable("a listener hands links to the user; it has no nodes")

@pytest.mark.interop("send", "rabbitmq")
@pytest.mark.interop("receive", "rabbitmq")
def test_two_features():
    pass

def test_unmarked():
    pass
'''


@pytest.fixture
def matrix_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("interop_matrix", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["interop_matrix"] = module
    spec.loader.exec_module(module)
    return module


def run(pytester: pytest.Pytester, source: str = TESTS, *args: str) -> tuple[Any, Path]:
    pytester.makepyfile(test_sample=source)
    results = pytester.path / "out" / "results.json"
    outcome = pytester.runpytest("-p", "interop_plugin", "--strict-markers",
                                 f"--interop-results={results}", *args)
    return outcome, results


def by_node(results: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    data = json.loads(results.read_text())
    assert data["version"] == 1
    return {(r["nodeid"].split("::")[1], r["feature"], r["peer"]): r
            for r in data["results"]}


def test_each_outcome_reaches_the_results(pytester: pytest.Pytester) -> None:
    outcome, results = run(pytester)
    outcome.assert_outcomes(passed=6, failed=1, skipped=2)
    rows = by_node(results)
    assert {key: (r["outcome"], r["reason"]) for key, r in rows.items()} == {
        ("test_passes", "send", "rhea"): ("pass", ""),
        ("test_refused", "transactions", "rabbitmq"): (
            "refused", "RabbitMQ 3.10 has no AMQP 1.0 transactions (its plugin's README)"),
        ("test_fails", "receive", "proton-c"): (
            "fail", "AssertionError: the broker dropped it"),
        ("test_skipped", "receive", "rhea"): ("skip", "rhea is not installed"),
        ("test_each_peer[rhea]", "durable subscription", "rhea"): (
            "refused", "rhea's peer keeps no subscriptions"),
        ("test_each_peer[spec-broker]", "durable subscription", "spec-broker"): ("pass", ""),
        ("test_each_peer[amqscale]", "durable subscription", "amqscale"): (
            "n/a", "a listener hands links to the user; it has no nodes"),
        ("test_two_features", "send", "rabbitmq"): ("pass", ""),
        ("test_two_features", "receive", "rabbitmq"): ("pass", ""),
    }
    assert rows[("test_passes", "send", "rhea")]["nodeid"] == "test_sample.py::test_passes"
    outcome.stdout.fnmatch_lines(["interop: 9 results written to *results.json"])


def test_no_option_no_file(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sample=TESTS)
    pytester.runpytest("-p", "interop_plugin", "--strict-markers").assert_outcomes(
        passed=6, failed=1, skipped=2)
    assert list(pytester.path.rglob("*.json")) == []


def test_a_deselected_test_is_left_out_and_an_unreached_one_not_run(
        pytester: pytest.Pytester) -> None:
    _, results = run(pytester, TESTS, "-k", "not test_passes", "-x")
    rows = by_node(results)
    assert ("test_passes", "send", "rhea") not in rows
    assert rows[("test_fails", "receive", "proton-c")]["outcome"] == "fail"
    assert rows[("test_two_features", "send", "rabbitmq")]["outcome"] == "skip"  # -x: stopped
    assert rows[("test_two_features", "send", "rabbitmq")]["reason"] == "not run"


def test_a_failing_teardown_and_an_xfail_are_failures(pytester: pytest.Pytester) -> None:
    _, results = run(pytester, '''
import pytest

@pytest.fixture
def broken():
    yield
    raise RuntimeError("teardown broke")

@pytest.mark.interop("send", "rhea")
def test_teardown(broken):
    pass

@pytest.mark.interop("receive", "rhea")
@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert False
''')
    rows = by_node(results)
    assert rows[("test_teardown", "send", "rhea")]["outcome"] == "fail"
    assert "teardown: RuntimeError: teardown broke" in rows[
        ("test_teardown", "send", "rhea")]["reason"]
    assert rows[("test_xfail", "receive", "rhea")]["outcome"] == "fail"
    assert rows[("test_xfail", "receive", "rhea")]["reason"] == "expected to fail: known bug"


@pytest.mark.parametrize(("source", "message"), [
    ('@pytest.mark.interop("send", "qpidd")\ndef test_x():\n    pass\n',
     "*interop peer 'qpidd' is not one of amqscale, proton-python, rhea, rabbitmq, *"),
    ('@pytest.mark.interop("send")\ndef test_x():\n    pass\n',
     "*interop takes (feature, peer), two non-empty strs*"),
    ('def test_x(interop):\n    pass\n',
     "*uses the interop fixture without an @pytest.mark.interop(feature, peer) mark*"),
])
def test_misuse_is_an_error(pytester: pytest.Pytester, source: str, message: str) -> None:
    outcome, _ = run(pytester, "import pytest\n\n" + source)
    assert outcome.ret != 0
    lines = outcome.outlines + outcome.errlines
    assert any(fnmatch.fnmatch(line, message) for line in lines), lines


def test_the_marker_is_registered(pytester: pytest.Pytester) -> None:
    outcome = pytester.runpytest("-p", "interop_plugin", "--markers")
    outcome.stdout.fnmatch_lines(["@pytest.mark.interop(feature, peer): *"])


def test_the_generated_matrix(pytester: pytest.Pytester, matrix_script: ModuleType,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(matrix_script, "NOT_APPLICABLE", {})
    _, results = run(pytester)
    output = pytester.path / "interop.md"
    assert matrix_script.main([str(results), "-o", str(output)]) == 0
    text = output.read_text()
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert table[0] == ("| feature | amqscale listener | proton-python | rhea | RabbitMQ 3.10 "
                        "| Proton C (broker, examples) | spec broker |")
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in table[2:]}
    # Known features first, in FEATURES' order, then the others alphabetically.
    assert list(rows) == ["send", "receive", "durable subscription", "transactions"]
    assert rows["send"] == ["not run", "not run", "pass", "pass", "not run", "not run |"]
    assert rows["receive"] == ["not run", "not run", "not run (1)", "pass", "fail (2)",
                               "not run |"]
    assert rows["durable subscription"] == ["not applicable (3)", "not run",
                                            "refused by the peer (4)", "not run", "not run",
                                            "pass |"]
    assert rows["transactions"][3] == "refused by the peer (5)"
    assert "1. rhea is not installed" in text
    assert "2. failed: `test_sample.py::test_fails`" in text
    assert "3. a listener hands links to the user; it has no nodes" in text
    assert "4. rhea's peer keeps no subscriptions" in text
    assert "5. RabbitMQ 3.10 has no AMQP 1.0 transactions (its plugin's README)" in text
    assert "**refused by the peer**" in text  # the legend

    # --check: quiet and 0 when it matches; the diff and 1 once the results change.
    assert matrix_script.main([str(results), "-o", str(output), "--check"]) == 0
    data = json.loads(results.read_text())
    data["results"] = [r for r in data["results"] if r["nodeid"] != "test_sample.py::test_fails"]
    results.write_text(json.dumps(data))
    assert matrix_script.main([str(results), "-o", str(output), "--check"]) == 1
    assert output.read_text() == text  # --check writes nothing


def test_mixed_outcomes_in_one_cell(matrix_script: ModuleType, tmp_path: Path) -> None:
    def row(outcome: str, reason: str = "", nodeid: str = "t.py::t") -> dict[str, str]:
        return {"feature": "send", "peer": "rhea", "outcome": outcome, "reason": reason,
                "nodeid": nodeid}

    def cell(*rows: dict[str, str]) -> str:
        text = matrix_script.render(list(rows))
        line = next(x for x in text.splitlines() if x.startswith("| send |"))
        return line.split(" | ")[3]

    assert cell(row("pass"), row("refused", "no")) == "refused by the peer (1)"
    assert cell(row("pass"), row("fail", nodeid="t.py::u")) == "fail (1)"
    assert cell(row("pass"), row("skip", "later")) == "pass"
    assert cell(row("skip", "later"), row("skip", "later")) == "not run (1)"


def test_declared_inapplicable_cells(matrix_script: ModuleType,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(matrix_script, "NOT_APPLICABLE", {
        ("listen", "rabbitmq"): "a broker opens no connections", ("listen", "rhea"): "x"})
    text = matrix_script.render([{"feature": "listen", "peer": "rhea", "outcome": "pass",
                                  "reason": "", "nodeid": "t.py::t"}])
    line = next(x for x in text.splitlines() if x.startswith("| listen |"))
    assert line.split(" | ")[3:5] == ["pass", "not applicable (1)"]  # a result wins
    assert "1. a broker opens no connections" in text


def test_the_script_knows_the_plugins_peers(matrix_script: ModuleType) -> None:
    assert tuple(matrix_script.PEERS) == interop_plugin.PEERS
    assert set(matrix_script.LABELS) == set(interop_plugin.OUTCOMES)


def test_the_committed_matrix_is_the_scripts_output(matrix_script: ModuleType) -> None:
    # docs/interop.md parses as the script writes it: regenerating it from itself would
    # need the results; at least its header and table shape are the script's.
    text = (SCRIPT.parent.parent / "docs" / "interop.md").read_text()
    assert text.startswith(matrix_script.HEADER)
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert table[0].count("|") == len(matrix_script.PEERS) + 2
