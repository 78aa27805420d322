"""Source and Target: the two ends of a link's address (AMQP 1.0, 3.5).

A receiver attaches *from* a Source (the node it takes messages from: a queue, a topic,
a node the peer creates for it), a sender *to* a Target. Both carry more than an
address: durability, an expiry policy, capabilities (``queue``, ``topic``, ``shared``,
``global``), dynamic-node properties; a Source also has a distribution mode (``move``
consumes, ``copy`` browses) and filters (a JMS selector among them).

The peer answers an attach with its own view of each terminus: what it kept. A broker that
ignores a filter leaves it out of its answer (AMQP 1.0, 3.5.3), so ``Receiver.remote_source
.filters`` tells whether a selector is being applied. The names are proton's where proton
has them (``Terminus.address``, ``durability``, ``expiry_policy``, ``distribution_mode``,
``capabilities``, ``filter``), spelled as the AMQP specification spells the values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import codec
from .types import Described, symbol
from .workers import protocol as p

DURABILITY = ("none", "configuration", "unsettled-state")
EXPIRY_POLICIES = ("link-detach", "session-end", "connection-close", "never")
DISTRIBUTION_MODES = ("move", "copy")

# The JMS selector filter (AMQP filters registry: apache.org:selector-filter:string).
SELECTOR_DESCRIPTOR = symbol("apache.org:selector-filter:string")
SELECTOR_CODE = 0x0000468C00000004
SELECTOR_KEY = symbol("selector")  # the filter-set key Qpid JMS and proton use


def selector_filter(selector: str) -> Described:
    """A JMS selector as the described value a filter set carries."""
    if not isinstance(selector, str) or not selector:
        raise TypeError(f"a selector must be a non-empty str, not {selector!r}")
    return Described(SELECTOR_DESCRIPTOR, selector)


def _names(value: Sequence[str] | str | None, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    names = tuple(value)
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{what} must be non-empty strs, not {name!r}")
    return names


def _choice(value: str | None, allowed: tuple[str, ...], what: str) -> None:
    if value is not None and value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}, not {value!r}")


def _encode_map(value: Mapping[Any, Any] | None, what: str) -> bytes | None:
    """A map's AMQP encoding, its str keys as symbols (the spec's fields-type keys)."""
    if not value:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a dict, not {type(value).__name__}")
    keyed = {symbol(k) if type(k) is str else k: v for k, v in value.items()}
    try:
        return codec.encode(keyed)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{what}: {exc}") from None


def _decode_map(encoded: bytes | None) -> dict[Any, Any]:
    if not encoded:
        return {}
    try:
        value = codec.decode(encoded)
    except ValueError:
        return {}
    return dict(value) if isinstance(value, dict) else {}


@dataclass(frozen=True)
class _Terminus:
    address: str | None = None
    dynamic: bool = False
    durable: str = "none"
    expiry_policy: str | None = None
    timeout: int = 0
    capabilities: Sequence[str] = ()  # kept as a tuple
    dynamic_node_properties: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.address is not None and not isinstance(self.address, str):
            raise TypeError(f"address must be a str or None, not {self.address!r}")
        if not isinstance(self.dynamic, bool):
            raise TypeError(f"dynamic must be a bool, not {self.dynamic!r}")
        if self.dynamic and self.address is not None:
            raise ValueError("a dynamic terminus has no address: the peer names the node")
        _choice(self.durable, DURABILITY, "durable")
        _choice(self.expiry_policy, EXPIRY_POLICIES, "expiry_policy")
        if not isinstance(self.timeout, int) or isinstance(self.timeout, bool) or not (
                0 <= self.timeout < 2**32):
            raise ValueError(f"timeout must be whole seconds, 0..2**32-1, not {self.timeout!r}")
        object.__setattr__(self, "capabilities", _names(self.capabilities, "capabilities"))
        _encode_map(self.dynamic_node_properties, "dynamic_node_properties")  # checks it

    @property
    def durable_subscription(self) -> bool:
        """Durable and never expiring: the node outlives the link (and its process)."""
        return self.durable != "none" and self.expiry_policy == "never"

    def _wire_fields(self) -> dict[str, Any]:
        return {
            "address": self.address, "dynamic": self.dynamic,
            "durable": DURABILITY.index(self.durable), "expiry_policy": self.expiry_policy,
            "timeout": self.timeout, "capabilities": list(self.capabilities) or None,
            "node_properties": _encode_map(self.dynamic_node_properties,
                                           "dynamic_node_properties"),
        }

    def _mark_dynamic(self, wire: p.Terminus) -> None:
        # The peer's answer to a dynamic terminus is dynamic and has the node's address
        # (which a user's own terminus may not have both of).
        object.__setattr__(self, "dynamic", wire.dynamic)

    @staticmethod
    def _fields_of(wire: p.Terminus) -> dict[str, Any]:
        return {
            "address": wire.address,
            "dynamic": wire.dynamic and not wire.address,  # see _mark_dynamic
            "durable": DURABILITY[wire.durable] if 0 <= wire.durable < 3 else "none",
            "expiry_policy": wire.expiry_policy, "timeout": wire.timeout,
            "capabilities": tuple(wire.capabilities or ()),
            "dynamic_node_properties": _decode_map(wire.node_properties),
        }


@dataclass(frozen=True)
class Source(_Terminus):
    """Where a receiver takes messages from.

    `address`: the node (None with `dynamic=True`: the peer creates one and names it in
    its answer, ``Receiver.address``). `durable` ("none", "configuration",
    "unsettled-state") and `expiry_policy` ("link-detach", "session-end" (AMQP's default),
    "connection-close", "never"): a durable subscription is durable with expiry "never",
    under a link name and container id the user keeps. `distribution_mode`: "move"
    (consume) or "copy" (browse: the messages stay). `filters`: a filter set, name ->
    value (a ``Described`` for typed filters); `selector` adds a JMS selector to it.
    `capabilities`: e.g. "queue", "topic", "shared", "global".
    """

    distribution_mode: str | None = None
    filters: Mapping[str, Any] = field(default_factory=dict)
    selector: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _choice(self.distribution_mode, DISTRIBUTION_MODES, "distribution_mode")
        if self.selector is not None:
            selector_filter(self.selector)  # checks it
        self._filter_bytes()

    def _filter_set(self) -> dict[Any, Any]:
        filters: dict[Any, Any] = {symbol(k) if type(k) is str else k: v
                                   for k, v in dict(self.filters).items()}
        if self.selector is not None:
            filters[SELECTOR_KEY] = selector_filter(self.selector)
        return filters

    def _filter_bytes(self) -> bytes | None:
        filters = self._filter_set()
        if not filters:
            return None
        try:
            return codec.encode(filters)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"filters: {exc}") from None

    def wire(self) -> p.Terminus:
        """The attach's source (the worker's form)."""
        return p.Terminus(**self._wire_fields(), filter=self._filter_bytes(),
                          distribution_mode=self.distribution_mode)

    @classmethod
    def from_wire(cls, wire: p.Terminus | None) -> Source | None:
        """The peer's answer, as a Source (None for a null source: a refusal). Its
        `selector` is the JMS selector filter it kept, `filters` the others it kept."""
        if wire is None:
            return None
        filters: dict[str, Any] = {}
        selector = None
        for key, value in _decode_map(wire.filter).items():
            if isinstance(value, Described) and value.descriptor in (
                    SELECTOR_DESCRIPTOR, SELECTOR_CODE) and isinstance(value.value, str):
                selector = value.value
            else:
                filters[str(key)] = value
        source = cls(**cls._fields_of(wire), distribution_mode=wire.distribution_mode,
                     filters=filters, selector=selector or None)
        source._mark_dynamic(wire)
        return source


@dataclass(frozen=True)
class Target(_Terminus):
    """Where a sender's messages go: `address` (None: the anonymous relay, each
    message's own address decides; or `dynamic=True`: a node the peer creates)."""

    def wire(self) -> p.Terminus:
        return p.Terminus(**self._wire_fields())

    @classmethod
    def from_wire(cls, wire: p.Terminus | None) -> Target | None:
        if wire is None:
            return None
        target = cls(**cls._fields_of(wire))
        target._mark_dynamic(wire)
        return target


def as_source(address: str | Source | None, *, dynamic: bool = False,
              selector: str | None = None) -> Source:
    """A receiver's Source from its address argument and convenience options."""
    if isinstance(address, Source):
        if dynamic or selector is not None:
            raise ValueError("give dynamic and selector in the Source, not beside it")
        return address
    if address is not None and not isinstance(address, str):
        raise TypeError(f"address must be a str, a Source or None, not {address!r}")
    return Source(address, dynamic=dynamic, selector=selector)


def as_target(address: str | Target | None, *, dynamic: bool = False) -> Target:
    """A sender's Target from its address argument."""
    if isinstance(address, Target):
        if dynamic:
            raise ValueError("give dynamic in the Target, not beside it")
        return address
    if address is not None and not isinstance(address, str):
        raise TypeError(f"address must be a str, a Target or None, not {address!r}")
    return Target(address, dynamic=dynamic)


def one_link(terminus: Source | Target) -> bool:
    """Whether the terminus must be one link on one shard, not one per shard: a dynamic
    node is one node (K links would make K), and a durable subscription is one name."""
    return terminus.dynamic or terminus.durable_subscription


def encode_properties(properties: Mapping[str, Any] | None, what: str) -> bytes | None:
    """Link or connection properties (AMQP fields: symbol keys), encoded and checked."""
    return _encode_map(properties, what)


def decode_properties(encoded: bytes | None) -> dict[str, Any]:
    """The peer's properties, str keys."""
    return {str(k): v for k, v in _decode_map(encoded).items()}
