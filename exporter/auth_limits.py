"""Budgets that keep wrong passwords from becoming a CPU lever (basic auth in :mod:`exporter.webconfig`).

A bcrypt check is slow on purpose (~60 ms of CPU at cost 10). Without limits, a few clients sending wrong
passwords keep cores busy and slow every scrape. These pieces bound that work:

- ``Bucket``: a token bucket (a burst, then a steady rate), which may also be charged into debt;
- ``ClientTable``: one failure budget per client address, the least recently seen forgotten beyond a size,
  so that many addresses cannot grow memory (forgetting a client only gives it a fresh budget);
- ``client_key``: the address a budget belongs to; IPv6 clients are grouped by /64, the block one host
  usually gets, so a single attacker cannot get fresh budgets by changing the low bits;
- ``LogThrottle``: at most one line per client per period and a few lines per period in all.

None of these is thread-safe on its own: the caller holds one lock around them.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class AuthLimits:
    """How much bcrypt work failed logins may cause; the defaults and their reasons are in the comments."""

    # failed checks one client may make at once, then per second: a scraper with a typo in its password
    # (one try per scrape interval) never reaches it; a guesser gets ~86 000 tries a day instead of ~millions
    client_burst: float = 5.0
    client_per_second: float = 1.0
    # clients remembered (least recently seen forgotten first): ~250 bytes each, so ~1 MB at most
    clients: int = 4096
    # bcrypt seconds that failed checks of all clients together may spend at once, then per second: a
    # quarter of one core on average whatever the hash cost, however many addresses the attacker has
    global_seconds: float = 2.0
    global_per_second: float = 0.25
    # bcrypt checks at a time (exporter-toolkit also runs one at a time: one core at most), and the longest
    # wait for a turn before the request is answered 429 without hashing
    concurrent: int = 1
    wait_seconds: float = 1.0
    # checks that may wait for their turn; more are answered 429 at once, so a burst from many addresses
    # cannot hold many server threads (8 checks at cost 10 take ~0.5 s, within the wait)
    queue: int = 8
    # log lines about limited clients: one per client per period, and at most log_lines per period in all
    log_period_seconds: float = 60.0
    log_lines: int = 10


DEFAULT_LIMITS = AuthLimits()


class Bucket:
    """``capacity`` tokens, refilled at ``per_second``; ``charge`` may take it below zero (a debt)."""

    __slots__ = ("capacity", "per_second", "stamp", "tokens")

    def __init__(self, capacity: float, per_second: float, now: float) -> None:
        self.capacity = capacity
        self.per_second = per_second
        self.tokens = capacity
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.per_second)
            self.stamp = now

    def take(self, now: float, amount: float = 1.0) -> bool:
        """Take ``amount`` if there is that much; False (taking nothing) if not."""
        self._refill(now)
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True

    def give(self, amount: float = 1.0) -> None:
        """Give back what ``take`` took (never above capacity)."""
        self.tokens = min(self.capacity, self.tokens + amount)

    def charge(self, now: float, amount: float) -> None:
        """Take ``amount`` even if that leaves a debt."""
        self._refill(now)
        self.tokens -= amount

    def seconds_until(self, now: float, amount: float) -> float:
        """How long until ``amount`` can be taken (0 if it can now)."""
        self._refill(now)
        return max(0.0, (amount - self.tokens) / self.per_second)


class Client:
    """What is remembered about one client: its failure budget and when it was last logged about."""

    __slots__ = ("budget", "key", "logged_at")

    def __init__(self, key: str, budget: Bucket) -> None:
        self.key = key
        self.budget = budget
        self.logged_at: float | None = None


class ClientTable:
    """One ``Client`` per key; beyond ``limits.clients`` the least recently seen one is forgotten."""

    def __init__(self, limits: AuthLimits) -> None:
        self._limits = limits
        self._clients: OrderedDict[str, Client] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    def get(self, key: str, now: float) -> Client:
        client = self._clients.get(key)
        if client is None:
            client = Client(key, Bucket(self._limits.client_burst, self._limits.client_per_second, now))
            self._clients[key] = client
            while len(self._clients) > self._limits.clients:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(key)
        return client


def client_key(remote_addr: str) -> str:
    """The budget key of a client address: an IPv4 address, an IPv6 /64, or the text itself (bounded)."""
    try:
        address = ipaddress.ip_address(remote_addr.split("%", 1)[0])
    except ValueError:
        return remote_addr[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class LogThrottle:
    """Whether to log now: once per client (or once for all-client events) per period, and at most
    ``log_lines`` per period in all."""

    def __init__(self, limits: AuthLimits, now: float) -> None:
        self._period = limits.log_period_seconds
        self._lines = Bucket(float(limits.log_lines), limits.log_lines / limits.log_period_seconds, now)
        self._shared_logged_at: float | None = None  # for events about all clients together
        self.suppressed = 0  # lines held back by the overall cap since the last line written

    def allow(self, client: Client | None, now: float) -> bool:
        """True if a line about ``client`` (None: all clients) may be written now."""
        logged_at = self._shared_logged_at if client is None else client.logged_at
        if logged_at is not None and now - logged_at < self._period:
            return False  # said recently about this one
        if not self._lines.take(now):
            self.suppressed += 1
            return False
        if client is None:
            self._shared_logged_at = now
        else:
            client.logged_at = now
        return True
