"""Proxy server names to addresses: asynchronous, concurrent, remembered for
their time to live.

A run asks for the same few hundred server names from several stages (the
allowed-network check, the tester's TCP pre-check, geo by server address).
c-ares (through aiodns) answers them without a thread per lookup, reads
/etc/hosts first, and reports each record's TTL, which decides how long the
answer is kept. A name that does not resolve is remembered too, briefly, so a
dead domain shared by a thousand configs costs one query.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiodns

log = logging.getLogger(__name__)

# /etc/hosts answers carry TTL 0 and many resolvers send 0 for names they
# just fetched; a floor keeps one run from asking again for every stage.
MIN_TTL = 30.0
# A ceiling keeps a long run from outliving a record moved on purpose.
MAX_TTL = 3600.0
# How long "does not resolve" is believed (RFC 2308 suggests the SOA minimum;
# public zones mostly use minutes).
NEGATIVE_TTL = 60.0
# Lookups in flight at once; c-ares shares one socket, but a public
# resolver rate-limits bursts of thousands.
CONCURRENCY = 64


@dataclass(frozen=True, slots=True)
class Answer:
    """Addresses of one name (empty when it does not resolve) and until when
    they hold, on the resolver's clock."""

    addresses: tuple[str, ...]
    expires: float
    error: str = ""


def literal(host: str) -> str | None:
    """The host as an address when it is an IP literal, else None."""
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        return None


def split_nameserver(text: str) -> tuple[str, int]:
    """ "IP", "IP:PORT" or "[IPv6]:PORT" as (IP, port); port 53 by default."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest.removeprefix(":") or 53)
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, 53


class Resolver:
    """Resolves host names through c-ares and keeps each answer for its TTL.

    One instance belongs to one event loop (c-ares binds to it on first use).
    Lookups of the same name at the same time share one query.
    """

    def __init__(
        self,
        nameservers: Sequence[str] | None = None,
        *,
        timeout: float = 3.0,
        tries: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.nameservers = list(nameservers or [])
        self.timeout = timeout
        self.tries = tries
        self.clock = clock
        self.queries = 0
        self.hits = 0
        self._answers: dict[str, Answer] = {}
        self._pending: dict[str, asyncio.Future[Answer]] = {}
        self._channel: aiodns.DNSResolver | None = None
        self._limit: asyncio.Semaphore | None = None

    def cached(self, host: str) -> tuple[str, ...] | None:
        """Addresses of a name already resolved and still fresh, else None.

        IP literals are their own answer.
        """
        address = literal(host)
        if address is not None:
            return (address,)
        answer = self._answers.get(host.lower())
        if answer is None or answer.expires <= self.clock():
            return None
        return answer.addresses

    async def resolve(self, host: str) -> Answer:
        """The addresses of a host; `Answer.addresses` is empty when it does
        not resolve, with the reason in `Answer.error`."""
        address = literal(host)
        if address is not None:
            return Answer((address,), float("inf"))
        name = host.lower().rstrip(".")
        answer = self._answers.get(name)
        if answer is not None and answer.expires > self.clock():
            self.hits += 1
            return answer
        pending = self._pending.get(name)
        if pending is None:
            pending = asyncio.ensure_future(self._query(name))
            self._pending[name] = pending
            pending.add_done_callback(lambda _: self._pending.pop(name, None))
        else:
            self.hits += 1
        return await asyncio.shield(pending)

    async def addresses(self, host: str) -> tuple[str, ...]:
        """Shorthand for `resolve(host).addresses`."""
        return (await self.resolve(host)).addresses

    async def _query(self, name: str) -> Answer:
        if self._channel is None:
            # Only pass what was set: aiodns reads /etc/resolv.conf otherwise.
            options: dict[str, object] = {"timeout": self.timeout, "tries": self.tries}
            if self.nameservers:
                options["nameservers"] = self.nameservers
            self._channel = aiodns.DNSResolver(**options)
            self._limit = asyncio.Semaphore(CONCURRENCY)
        assert self._limit is not None
        async with self._limit:
            self.queries += 1
            try:
                result = await self._channel.getaddrinfo(
                    name, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM
                )
            except aiodns.error.DNSError as exc:
                message = exc.args[1] if len(exc.args) > 1 else str(exc)
                answer = Answer((), self.clock() + NEGATIVE_TTL, str(message))
                self._answers[name] = answer
                return answer
        found: list[str] = []
        ttl = MAX_TTL
        for node in result.nodes:
            raw = node.addr[0]
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            if text not in found:
                found.append(text)
            ttl = min(ttl, float(node.ttl))
        # IPv4 first: most free servers have no working IPv6 route.
        found.sort(key=lambda a: ":" in a)
        if not found:
            answer = Answer((), self.clock() + NEGATIVE_TTL, "no addresses")
        else:
            answer = Answer(tuple(found), self.clock() + max(MIN_TTL, ttl))
        self._answers[name] = answer
        return answer

    async def aclose(self) -> None:
        """Release c-ares; the remembered answers stay readable."""
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()
