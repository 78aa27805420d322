"""The worker's C hot path (amqscale/workers/_hotpath.c) and its binding to proton.

The engine tests run on both paths (tests/conftest.py's `engine_path` fixture); these
check the binding itself: when the C path is used, that it refuses what it cannot call
safely, and that its calls refuse bad arguments before anything is sent.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cproton_ffi import lib

from amqscale.workers import _binding

hotpath = pytest.importorskip("amqscale.workers._hotpath")


def _bound_in_a_new_process(pure_python: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "AMQSCALE_PURE_PYTHON"}
    if pure_python is not None:
        env["AMQSCALE_PURE_PYTHON"] = pure_python
    done = subprocess.run(
        [sys.executable, "-c", "from amqscale.workers import _binding; "
                               "print(_binding.hotpath is not None)"],
        env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_the_c_path_is_used_unless_pure_python_is_asked_for() -> None:
    assert _bound_in_a_new_process(None) == "True"
    assert _bound_in_a_new_process("0") == "True"
    assert _bound_in_a_new_process("1") == "False"


def test_a_proton_function_of_another_c_type_leaves_the_python_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert _binding._function_addresses() is not None
    wrong = (("pn_link_send", "ssize_t(*)(struct pn_link_t *, char *, int)"),)
    monkeypatch.setattr(_binding, "FUNCTIONS", _binding.FUNCTIONS[:1] + wrong
                        + _binding.FUNCTIONS[2:])
    assert _binding._function_addresses() is None
    monkeypatch.setattr(_binding, "FUNCTIONS", (("pn_no_such_function", "void(*)(void)"),))
    assert _binding._function_addresses() is None


def test_bind_refuses_the_wrong_number_of_functions() -> None:
    with pytest.raises(ValueError, match="function addresses expected"):
        hotpath.bind((1, 2, 3), bytearray(16), lib.PN_DELIVERY, lib.PN_ACCEPTED, 1024)


def test_a_transfer_with_a_payload_that_is_not_bytes_sends_nothing() -> None:
    link = lib.pn_sender(lib.pn_session(lib.pn_connection()), b"l")
    unsettled: dict[int, int] = {}
    with pytest.raises(TypeError, match="payload 1 is not bytes"):
        hotpath.transfer(_binding.address(link), [b"a", "b", b"c"], 0, 3, 0, unsettled)
    assert unsettled == {} and lib.pn_link_unsettled(link) == 0
    with pytest.raises(IndexError, match=r"\[0:4\] of 3 payloads"):
        hotpath.transfer(_binding.address(link), [b"a", b"b", b"c"], 0, 4, 0, unsettled)
    with pytest.raises(TypeError, match="unsettled must be a dict"):
        hotpath.transfer(_binding.address(link), [b"a"], 0, 1, 0, [])
    with pytest.raises(ValueError, match="null link"):
        hotpath.transfer(0, [b"a"], 0, 1, 0, unsettled)
    assert lib.pn_link_unsettled(link) == 0


def test_settle_skips_ids_it_does_not_hold() -> None:
    deliveries: dict[int, int] = {}
    hotpath.settle(deliveries, [1, 2, 3], lib.PN_ACCEPTED)  # nothing to settle, no error
    with pytest.raises(TypeError):
        hotpath.settle(deliveries, (1, 2), lib.PN_ACCEPTED)  # ids must be a list
