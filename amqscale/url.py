"""Parsing of amqp:// and amqps:// URLs, with errors that say what is wrong."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from .errors import URLError

DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}


@dataclass(frozen=True)
class URL:
    scheme: str
    host: str
    port: int
    user: str | None = None
    # Kept out of repr: secrets never reach logs.
    password: str | None = field(default=None, repr=False)
    path: str = ""

    @property
    def tls(self) -> bool:
        return self.scheme == "amqps"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        return f"{self.scheme}://{user}{host}:{self.port}{self.path}"


def parse_url(url: str) -> URL:
    """Parse `amqp[s]://[user[:password]@]host[:port][/path]`; port 0 means any (listen)."""
    if not isinstance(url, str):
        raise URLError(f"URL must be a str, not {type(url).__name__}")
    if "://" not in url:
        raise URLError(f"malformed URL {url!r}: expected amqp://host[:port] or amqps://...")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise URLError(f"malformed URL {url!r}: scheme {parts.scheme!r} is not amqp or amqps")
    host = parts.hostname
    if not host:
        raise URLError(f"malformed URL {url!r}: no host")
    try:
        port = parts.port
    except ValueError as exc:
        raise URLError(f"malformed URL {url!r}: {exc}") from None
    if "[" in (parts.netloc or ""):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise URLError(f"malformed URL {url!r}: {host!r} is not an IPv6 address") from None
    return URL(
        scheme=scheme,
        host=host,
        port=DEFAULT_PORTS[scheme] if port is None else port,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        path=parts.path,
    )
