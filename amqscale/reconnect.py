"""When and where a lost connection is opened again: the backoff schedule and its limits.

The schedule is proton's (0, then `initial`, doubling up to `max_delay`: 0, 0.1, 0.2, 0.4,
... 10, 10, ...) with jitter added, so that a fleet of clients that lost one broker does not
come back in lock-step. Unlike proton's `Backoff`, the schedule starts again after an open
that lasted (the core's STABLE_CONNECTION, a second): a connection that ran for a week and
drops retries at once, not at the delay where its last outage ended, while one that a peer
breaks as soon as it opens keeps meeting the growing delays.

A "try" is one round through the failover list (every URL once), as proton counts
`max_tries`; each URL of a round is tried at that round's delay.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .url import URL, parse_url


@dataclass(frozen=True)
class Backoff:
    """How a lost connection is retried.

    `initial`, `factor` and `max_delay` make proton's schedule (seconds); `jitter` spreads
    each delay over +-`jitter` of itself (0 turns it off; the first, immediate retry stays
    immediate). `max_tries` rounds through the URL list, or `deadline` seconds since the
    connection was lost, end the retries (None: no limit); the connection then fails with
    the last error.
    """

    initial: float = 0.1
    factor: float = 2.0
    max_delay: float = 10.0
    max_tries: int | None = None
    deadline: float | None = None
    jitter: float = 0.2

    def __post_init__(self) -> None:
        for name in ("initial", "max_delay"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"Backoff {name} must be a number >= 0, not {value!r}")
        if not isinstance(self.factor, int | float) or not self.factor >= 1:
            raise ValueError(f"Backoff factor must be a number >= 1, not {self.factor!r}")
        if not isinstance(self.jitter, int | float) or not 0 <= self.jitter < 1:
            raise ValueError(f"Backoff jitter must be in [0, 1), not {self.jitter!r}")
        if self.max_tries is not None and (
                not isinstance(self.max_tries, int) or self.max_tries < 1):
            raise ValueError(f"Backoff max_tries must be an int >= 1 or None, "
                             f"not {self.max_tries!r}")
        if self.deadline is not None and (
                not isinstance(self.deadline, int | float) or not self.deadline > 0):
            raise ValueError(f"Backoff deadline must be seconds > 0 or None, "
                             f"not {self.deadline!r}")

    def delays(self, rng: random.Random) -> Iterator[float]:
        """The delay before each round, jittered; ends after `max_tries` rounds."""
        delay = 0.0
        tries = 0
        while self.max_tries is None or tries < self.max_tries:
            yield delay * (1 + self.jitter * (2 * rng.random() - 1)) if delay else 0.0
            tries += 1
            delay = self.initial if delay == 0 else min(self.max_delay, delay * self.factor)


@dataclass(frozen=True)
class Delays:
    """A fixed list of delays (proton's ``reconnect=[0, 0.5, 1]``): one round each."""

    values: tuple[float, ...]
    deadline: float | None = None

    def delays(self, rng: random.Random) -> Iterator[float]:
        return iter(self.values)


Policy = Backoff | Delays


def reconnect_policy(reconnect: bool | Backoff | Iterable[float] | None) -> Policy | None:
    """`connect()`'s `reconnect` argument, checked: True or None the default Backoff,
    False none, a Backoff as it is, an iterable of delays (seconds) a fixed schedule."""
    if reconnect is None or reconnect is True:
        return Backoff()
    if reconnect is False:
        return None
    if isinstance(reconnect, Backoff):
        return reconnect
    if isinstance(reconnect, str | bytes) or not isinstance(reconnect, Iterable):
        raise TypeError(f"reconnect must be True, False, a Backoff or a list of delays, "
                        f"not {reconnect!r}")
    values = tuple(reconnect)
    if not values or not all(isinstance(v, int | float) and math.isfinite(v) and v >= 0
                             for v in values):
        raise ValueError(f"reconnect delays must be numbers >= 0, not {list(values)!r}")
    return Delays(tuple(float(v) for v in values))


def failover_urls(url: URL, urls: Iterable[str] | None) -> list[URL]:
    """The failover list: `url` first, then each of `urls` not equal to it (checked; of
    the same scheme). The credentials and TLS settings are the connection's, for all."""
    result = [url]
    if urls is None:
        return result
    if isinstance(urls, str | bytes):
        raise TypeError("urls must be a list of URLs, not one string")
    for text in urls:
        other = parse_url(text)
        if other.port == 0:
            raise ValueError(f"cannot connect to port 0 in {text!r}")
        if other.scheme != url.scheme:
            raise ValueError(f"failover URL {text!r} is {other.scheme}:// and the first "
                             f"is {url.scheme}://: a connection's TLS settings are one")
        if other != url:
            result.append(other)
    return result
