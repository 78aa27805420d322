"""A bench run's options, checked, and how they divide among the producer and consumer
agents (`plan`). Every check raises ValueError naming the option, before any process
starts."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from ..security import TLS
from ..url import parse_url
from . import stamp
from .schedule import Schedule, parse_rate

DEFAULT_COUNT = 200_000


@dataclass
class BenchConfig:
    url: str | None = None  # None: peer-to-peer (the consumers listen on listen_host)
    listen_host: str = "127.0.0.1"  # peer-to-peer: where consumers listen (::1 for IPv6)
    address: str = "amqscale-bench"  # a "%d" in it is numbered 0 .. addresses-1
    addresses: int = 1
    producers: int = 1
    consumers: int = 1
    connections: int = 1  # AMQP connections (shards) of each producer and each consumer
    workers: int = 1  # worker processes of each agent
    count: int | None = None  # messages in all; DEFAULT_COUNT without --duration
    duration: float | None = None  # seconds after the warm-up
    warmup: float = 0.0  # seconds at the start left out of the results
    rate: str | None = None  # total msg/s over all producers, or steps "r:s,r:s"; None: all-out
    ramp: float = 0.0  # seconds from 0 to the (first) rate
    size: str = "100"  # body bytes: "100", "100-1000", "100:80,1000:20"
    body_content: str = "zeros"  # zeros, random or text
    messages: bool = False  # Message objects with an id and properties, not bare bytes
    properties: dict[str, Any] = field(default_factory=dict)  # application properties
    durable: bool = False
    ttl: int | None = None  # milliseconds
    presettled: bool = False  # at-most-once
    credit: int = 1000  # each consumer link's
    max_in_flight: int = 1000  # unsettled messages of each producer, over its connections
    batch: int = 0  # 0: send()/receive() one per call; N: send_many/receive_many of N
    tx_size: int = 0  # messages per transaction (0: none)
    timeout: float = 10.0  # consumers give up after this long without a message
    max_p99: float | None = None  # microseconds: fail the run above it
    min_rate: float | None = None  # msg/s: fail the run below it
    seed: int = field(default_factory=lambda: random.getrandbits(31))  # the run id
    # Security: the broker's amqps:// with `tls_ca` (and a client certificate), or,
    # peer-to-peer, consumers listening on amqps:// with `tls_cert`/`tls_key` and producers
    # trusting `tls_ca`. A user and password go in the URL (never shown in the results).
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_verify: str | None = None  # peer-name (default), peer or none
    sasl_mechanisms: str | None = None
    allow_insecure_mechanisms: bool = False  # PLAIN without TLS

    def check(self) -> None:
        """Raise ValueError naming the first bad option."""
        if self.url is not None:
            parse_url(self.url)
        for name in ("addresses", "producers", "consumers", "connections", "workers",
                     "credit", "max_in_flight"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, "
                                 f"not {value!r}")
        for name in ("batch", "tx_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative")
        if self.count is not None and self.count < 1:
            raise ValueError(f"--count must be a positive integer, not {self.count}")
        for name in ("duration", "warmup", "ramp", "timeout"):
            value = getattr(self, name)
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"--{name} must be a duration in seconds, not {value!r}")
        if self.duration == 0:
            raise ValueError("--duration must be more than 0 s")
        if self.addresses > 1 and "%d" not in self.address:
            raise ValueError(f"--addresses {self.addresses} needs a %d in --address "
                             f"({self.address!r}) to number them")
        if self.url is None and self.consumers > self.producers:
            raise ValueError(f"peer-to-peer, each producer sends to one consumer's listener: "
                             f"--consumers ({self.consumers}) more than --producers "
                             f"({self.producers}) leaves a consumer with nothing")
        if self.tx_size and self.presettled:
            raise ValueError("--tx-size needs at-least-once: it cannot go with --presettled")
        if self.tx_size and self.batch:
            raise ValueError("--tx-size sends one message per call: it cannot go with --batch")
        if self.ttl is not None and self.ttl < 0:
            raise ValueError(f"--ttl must not be negative, not {self.ttl}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"--run-id must fit in 32 bits, not {self.seed}")
        if self.ramp and not self.rate:
            raise ValueError("--ramp needs --rate: it ramps up to that rate")
        stamp.parse_sizes(self.size)
        stamp.filler(self.body_content, 0)
        self.schedule()
        self._check_tls()

    def _check_tls(self) -> None:
        if not self.uses_tls:
            return
        if self.url is not None and not self.url.startswith("amqps://"):
            raise ValueError(f"--tls-* options need an amqps:// --url, not {self.url!r}: "
                             "TLS is never implied")
        if self.url is None and self.tls_cert is None:
            raise ValueError("peer-to-peer TLS needs --tls-cert (and --tls-key) for the "
                             "consumers' listeners")
        self.listener_tls()
        self.client_tls()

    @property
    def uses_tls(self) -> bool:
        return any(v is not None for v in (self.tls_ca, self.tls_cert, self.tls_key,
                                          self.tls_verify)) or bool(
            self.url and self.url.startswith("amqps://"))

    def client_tls(self) -> TLS | None:
        """What producers and consumers connect with (None: no TLS, or its defaults)."""
        if not self.uses_tls:
            return None
        mine = {} if self.url is None else {"cert": self.tls_cert, "key": self.tls_key}
        return TLS(ca=self.tls_ca, verify=self.tls_verify, **mine)

    def listener_tls(self) -> TLS | None:
        """Peer-to-peer with TLS: the consumers' listeners' certificate."""
        if self.url is not None or self.tls_cert is None:
            return None
        return TLS(cert=self.tls_cert, key=self.tls_key)

    def connect_options(self) -> dict[str, Any]:
        """connect()'s security arguments."""
        return {"tls": self.client_tls(), "sasl_mechanisms": self.sasl_mechanisms,
                "allow_insecure_mechanisms": self.allow_insecure_mechanisms}

    @property
    def total_count(self) -> int | None:
        if self.count is None and self.duration is None:
            return DEFAULT_COUNT
        return self.count

    @property
    def uses_messages(self) -> bool:
        """Whether bodies go out as Message objects: asked for, or needed for a header or
        properties."""
        return self.messages or self.durable or self.ttl is not None or bool(self.properties)

    def schedule(self) -> Schedule | None:
        if not self.rate:
            return None
        return Schedule(parse_rate(self.rate), self.ramp)

    def address_of(self, number: int) -> str:
        return self.address.replace("%d", str(number)) if "%d" in self.address else \
            self.address

    def as_json(self) -> dict[str, Any]:
        shown = str(parse_url(self.url)) if self.url else None  # never the password
        return dict(asdict(self), url=shown)


@dataclass
class AgentPlan:
    """One producer's or consumer's part of the run."""

    role: str  # "producer" or "consumer"
    index: int
    config: BenchConfig
    addresses: list[str]
    count: int | None = None  # a producer's share of --count
    url: str | None = None  # where to connect; None for a listening consumer
    any_run: bool = False  # a consumer on its own (`bench receive`): every run's messages

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"


def _share(total: int | None, parts: int, index: int) -> int | None:
    if total is None:
        return None
    return total // parts + (1 if index < total % parts else 0)


def _assigned(count: int, agents: int, index: int) -> list[int]:
    """Address numbers for agent `index` of `agents`: each address goes to one agent when
    there are more addresses than agents, else agents share addresses round robin."""
    if count >= agents:
        return list(range(index, count, agents))
    return [index % count]


def plan(config: BenchConfig, roles: tuple[str, ...] = ("consumer", "producer")
         ) -> list[AgentPlan]:
    """The agents of a run: consumers first (peer-to-peer, their listeners' URLs are
    filled in before the producers start)."""
    config.check()
    agents = []
    if "consumer" in roles:
        for c in range(config.consumers):
            addresses = [config.address_of(n) for n in
                         _assigned(config.addresses, config.consumers, c)]
            agents.append(AgentPlan("consumer", c, config, addresses, url=config.url))
    if "producer" in roles:
        for p in range(config.producers):
            addresses = [config.address_of(n) for n in
                         _assigned(config.addresses, config.producers, p)]
            agents.append(AgentPlan("producer", p, config, addresses,
                                    count=_share(config.total_count, config.producers, p),
                                    url=config.url))
    return agents
