"""The C hot path (`_hotpath.c`) bound to proton's functions, or None for pure Python.

`_hotpath` calls proton's functions through their addresses, taken here from
python-qpid-proton's cffi module, each checked against the C type `_hotpath.c` declares for
it: a proton whose signatures differ leaves the worker on its Python path (engine.py), never
calling a function with the wrong arguments. ``AMQSCALE_PURE_PYTHON=1`` (read at import, as
the codec does) or a build without the extension does the same.

Proton's objects are keyed by address (an int) where both paths share a dict.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from cproton_ffi import ffi, lib

from . import protocol as p

RX_BATCH = 1024  # deliveries per Deliveries event at most
DRAINED, SLOW_PATH = 0, 1  # what hotpath.drain() returns, besides a failed read's code

# The functions _hotpath.c calls, in the order of its `pn` struct, with the C types it
# calls them with (as cffi spells them).
FUNCTIONS = (
    ("pn_delivery", "struct pn_delivery_t *(*)(struct pn_link_t *, struct pn_bytes_t)"),
    ("pn_link_send", "ssize_t(*)(struct pn_link_t *, char *, size_t)"),
    ("pn_link_advance", "_Bool(*)(struct pn_link_t *)"),
    ("pn_delivery_settle", "void(*)(struct pn_delivery_t *)"),
    ("pn_delivery_remote_state", "uint64_t(*)(struct pn_delivery_t *)"),
    ("pn_delivery_update", "void(*)(struct pn_delivery_t *, uint64_t)"),
    ("pn_delivery_pending", "size_t(*)(struct pn_delivery_t *)"),
    ("pn_delivery_partial", "_Bool(*)(struct pn_delivery_t *)"),
    ("pn_link_recv", "ssize_t(*)(struct pn_link_t *, char *, size_t)"),
    ("pn_delivery_settled", "_Bool(*)(struct pn_delivery_t *)"),
    ("pn_delivery_link", "struct pn_link_t *(*)(struct pn_delivery_t *)"),
    ("pn_collector_peek", "struct pn_event_t *(*)(struct pn_collector_t *)"),
    ("pn_collector_pop", "_Bool(*)(struct pn_collector_t *)"),
    ("pn_event_type", "pn_event_type_t(*)(struct pn_event_t *)"),
    ("pn_event_delivery", "struct pn_delivery_t *(*)(struct pn_event_t *)"),
)


def address(pointer: Any) -> int:
    """The address of a proton object (a cffi pointer)."""
    return int(ffi.cast("uintptr_t", pointer))


def as_delivery(delivery_address: int) -> Any:
    """The cffi pointer of a delivery known by its address."""
    return ffi.cast("pn_delivery_t *", delivery_address)


def _function_addresses() -> tuple[int, ...] | None:
    """The functions' addresses, or None if one is missing or has another C type."""
    addresses = []
    for name, ctype in FUNCTIONS:
        try:
            function = ffi.addressof(lib, name)
        except (AttributeError, ffi.error):
            return None
        if ffi.getctype(ffi.typeof(function)) != ctype:
            return None
        addresses.append(address(function))
    if ffi.sizeof("pn_bytes_t") != 16 or ffi.offsetof("pn_bytes_t", "start") != 8:
        return None  # _hotpath.c passes pn_bytes_t as {size_t size; const char *start}
    if ffi.sizeof("pn_event_type_t") != ffi.sizeof("int"):
        return None
    return tuple(addresses)


def _load() -> Any:
    if os.environ.get("AMQSCALE_PURE_PYTHON", "") not in ("", "0"):
        return None
    addresses = _function_addresses()
    if addresses is None:
        return None
    try:
        # By name, as the codec loads _ccodec: the extension is optional.
        module = importlib.import_module("amqscale.workers._hotpath")
    except ImportError:
        return None
    # Its receive buffer: a whole small message, or one part of a large one (as engine.py's).
    module.bind(addresses, bytearray(p.MAX_FRAGMENT), lib.PN_DELIVERY, lib.PN_ACCEPTED,
                RX_BATCH)
    return module


hotpath: Any = _load()
