"""Type stubs for the C extension (``_hotpath.c``): the worker's per-message proton calls.

Addresses are ints (proton objects by address, as ``_binding.address`` gives them).
"""

from collections.abc import Callable
from typing import Any

def bind(addresses: tuple[int, ...], recv_buffer: bytearray, delivery_event: int,
         accepted: int, rx_batch: int, /) -> None: ...
def transfer(link: int, payloads: list[bytes], start: int, end: int, first_seq: int,
             unsettled: dict[int, int] | None, /) -> None: ...
def settle(deliveries: dict[int, int], ids: list[int], state: int, /) -> None: ...
def drain(collector: int, links: dict[int, Any], dirty: list[Any],
          flush: Callable[[Any], object], /) -> int: ...
