"""TLS and basic auth for the HTTP endpoint, from a web config file in Prometheus' exporter-toolkit format.

``--web.config.file FILE`` takes the YAML of
https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md, with the same key names::

    tls_server_config:
      cert_file: server.crt          # required together with key_file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # default NoClientCert; or VerifyClientCertIfGiven
      client_ca_file: ca.crt         # required by the two verifying client_auth_types
      min_version: TLS12             # TLS10 | TLS11 | TLS12 (default) | TLS13
      max_version: TLS13
    basic_auth_users:                # user -> bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\\n')
      prometheus: $2y$10$...

What differs from exporter-toolkit:

- ``/healthz`` is never behind basic auth, so liveness probes need no credentials (it reveals only whether
  the collection loop runs). ``/``, ``/metrics`` and every other path are protected.
- The file and the certificates are read once, at start (restart to rotate them); a bad file stops the
  exporter at start with one line naming the key.
- ``http_server_config`` (HTTP/2, extra response headers) is accepted and ignored. Keys infermeter cannot
  honour (inline ``cert``/``key``/``client_ca``, ``cipher_suites``, ``curve_preferences``,
  ``prefer_server_cipher_suites``, ``client_allowed_sans``, ``rate_limit``, the ``RequestClientCert`` and
  ``RequireAnyClientCert`` client auth types) are refused rather than silently weakening the setup.

Basic auth, and what a client can make it cost (constants in :mod:`exporter.auth_limits`):

- A success is cached, keyed by an HMAC of user and password under a per-process random key (the plain
  password is never stored), for 5 minutes after its last use, so a scraper pays one bcrypt check when it
  first logs in and never again while it keeps scraping. A cached credential never meets the limits below.
- A header that is not well-formed Basic credentials (another scheme, bad base64, no colon, longer than the
  longest configured user name with a 1024-byte password needs) is answered 401 without hashing and
  without a log line. Only the first 72 bytes of a password are checked, as bcrypt defines and as
  exporter-toolkit (Go's bcrypt) and htpasswd do; the Python bcrypt library refuses longer ones instead.
- Every other check runs bcrypt, and that is bounded; a request over a bound is answered
  ``429 Too Many Requests`` with ``Retry-After``, without hashing (Prometheus shows the 429 in the target's
  error, which tells an operator what happened, where a 401 would send them to check the password):

  - one check at a time, at most 8 more waiting for their turn, each for at most 1 s;
  - per client address (an IPv6 /64 counts as one): 5 failed checks at once, then 1 a second, in a table
    of 4096 clients that forgets the least recently seen;
  - all failed checks together: at most 0.25 s of bcrypt a second (2 s at once), whatever the cost.

  Successful checks give their budget back. Behind a proxy all clients share the proxy's budget.
- Unknown user names are checked against a hash no password matches, at the cost most configured users
  have (the highest such cost on a tie), so they take as long as those users. Users at another cost can be
  told from unknown names by timing; ``describe`` says so at start. Use one cost for all users.
- Limited clients are logged at most once a minute each and 10 lines a minute in all; passwords, user
  names and hashes are never logged, and no answer echoes what the client sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import re
import secrets
import ssl
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import bcrypt

from exporter.auth_limits import DEFAULT_LIMITS, AuthLimits, Bucket, Client, ClientTable, LogThrottle, client_key

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

REALM = "infermeter"
OPEN_PATHS = frozenset({"/healthz"})

_BCRYPT = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")
_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version")
_UNSUPPORTED = {
    "rate_limit": "not supported by infermeter",
    "tls_server_config.cert": "inline certificates are not supported; use cert_file",
    "tls_server_config.key": "inline keys are not supported; use key_file",
    "tls_server_config.client_ca": "inline CAs are not supported; use client_ca_file",
    "tls_server_config.cipher_suites": "not supported by infermeter (Python's OpenSSL defaults are used)",
    "tls_server_config.curve_preferences": "not supported by infermeter (Python's OpenSSL defaults are used)",
    "tls_server_config.prefer_server_cipher_suites": "not supported by infermeter",
    "tls_server_config.client_allowed_sans": "not supported by infermeter",
}
_BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# the 22nd salt character carries 2 bits; the bcrypt library refuses a hash whose other 4 are not zero
_SALT_LAST = frozenset(".Oeu")
_COSTS = range(4, 32)  # what bcrypt accepts
_PASSWORD_BYTES = 72  # bcrypt reads no more of a password
_LONGEST_PASSWORD = 1024  # bytes; a header with a longer one is refused unread
_CACHE_SECONDS = 300.0  # a cached success lives this long after its last use
_CACHE_SIZE = 256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TLSServerConfig:
    cert_file: str
    key_file: str
    client_auth_type: str = "NoClientCert"
    client_ca_file: str | None = None
    min_version: str = "TLS12"
    max_version: str | None = None


@dataclass(frozen=True)
class WebConfig:
    """A parsed web config; ``tls`` None means plain HTTP, empty ``basic_auth_users`` means no auth."""

    path: str
    tls: TLSServerConfig | None = None
    basic_auth_users: Mapping[str, str] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()

    def ssl_context(self) -> ssl.SSLContext | None:
        """A server-side context with the certificate, client verification and versions; None without TLS."""
        tls = self.tls
        if tls is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = _TLS_VERSIONS[tls.min_version]
        if tls.max_version is not None:
            context.maximum_version = _TLS_VERSIONS[tls.max_version]
        _readable(self.path, "tls_server_config.cert_file", tls.cert_file)
        _readable(self.path, "tls_server_config.key_file", tls.key_file)
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        except ssl.SSLError as err:
            raise _error(self.path, "tls_server_config.cert_file",
                         f"cannot load {tls.cert_file} with key_file {tls.key_file}: "
                         f"{err.reason or err.strerror or 'not a PEM certificate and matching key'}") from None
        context.verify_mode = _CLIENT_AUTH[tls.client_auth_type]
        if tls.client_ca_file is not None:
            _readable(self.path, "tls_server_config.client_ca_file", tls.client_ca_file)
            try:
                context.load_verify_locations(cafile=tls.client_ca_file)
            except ssl.SSLError as err:
                raise _error(self.path, "tls_server_config.client_ca_file",
                             f"cannot load {tls.client_ca_file}: {err.reason or 'not a PEM certificate'}") from None
        return context

    def describe(self) -> str:
        """One line for the log, without secrets."""
        parts = []
        if self.tls is not None:
            parts.append(f"TLS on ({self.tls.min_version}+, client certificates: {self.tls.client_auth_type})")
        else:
            parts.append("TLS off")
        if self.basic_auth_users:
            parts.append(f"basic auth on ({len(self.basic_auth_users)} user(s), "
                         f"{_describe_costs(self.basic_auth_users.values())}; /healthz stays open)")
        else:
            parts.append("basic auth off")
        if self.ignored:
            parts.append(f"ignored: {', '.join(self.ignored)}")
        return ", ".join(parts)

    def protect(self, app: WSGIApp) -> WSGIApp:
        """``app`` behind basic auth when users are configured (``/healthz`` stays open); else ``app`` itself."""
        if not self.basic_auth_users:
            return app
        return BasicAuth(app, self.basic_auth_users)


@dataclass(frozen=True)
class Verdict:
    """What to answer: ``allowed``; else 401, or 429 with ``retry_after`` seconds when a limit was hit."""

    allowed: bool
    retry_after: int | None = None


ALLOWED = Verdict(True)
DENIED = Verdict(False)


def _bcrypt_check(password: bytes, hashed: bytes) -> bool:
    return bcrypt.checkpw(password, hashed)  # looked up at each call, so tests can count the calls


class BasicAuth:
    """``app`` behind HTTP basic auth against bcrypt hashes; see the module docstring for the bounds.

    ``clock`` and ``check`` (password, hash -> matches) are there for tests.
    """

    def __init__(self, app: WSGIApp, users: Mapping[str, str], limits: AuthLimits = DEFAULT_LIMITS,
                 clock: Callable[[], float] = time.monotonic,
                 check: Callable[[bytes, bytes], bool] = _bcrypt_check) -> None:
        self._app = app
        self._users = {user.encode(): hashed.encode() for user, hashed in users.items()}
        self._dummy = dummy_hash(users.values())
        longest_user = max((len(user) for user in self._users), default=0)
        self._max_header = len("Basic ") + 4 * math.ceil((longest_user + 1 + _LONGEST_PASSWORD) / 3) + 16
        self._limits = limits
        self._clock = clock
        self._check = check
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()  # guards what follows
        self._cache: OrderedDict[bytes, float] = OrderedDict()
        now = clock()
        self._clients = ClientTable(limits)
        self._failures = Bucket(limits.global_seconds, limits.global_per_second, now)
        self._log = LogThrottle(limits, now)
        self._turns = threading.BoundedSemaphore(limits.concurrent)
        self._queued = 0  # checks running or waiting for their turn

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "/") in OPEN_PATHS:
            return self._app(environ, start_response)
        verdict = self.verdict(environ.get("HTTP_AUTHORIZATION", ""), environ.get("REMOTE_ADDR", ""))
        if verdict.allowed:
            return self._app(environ, start_response)
        if verdict.retry_after is not None:
            start_response("429 Too Many Requests", [("Content-Type", "text/plain; charset=utf-8"),
                                                     ("Retry-After", str(verdict.retry_after))])
            return [b"too many login attempts; retry later\n"]
        start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                            ("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')])
        return [b"unauthorized\n"]

    def verdict(self, header: str, remote_addr: str) -> Verdict:
        """Check an Authorization header sent from ``remote_addr``, within the limits."""
        credentials = self._credentials(header)
        if credentials is None:
            return DENIED
        user, password = credentials
        key = hmac.new(self._key, len(user).to_bytes(4, "big") + user + password, hashlib.sha256).digest()
        with self._lock:
            now = self._clock()
            if self._cached(key, now):
                return ALLOWED
            client = self._clients.get(client_key(remote_addr), now)
            limited, line = self._admit(client, now)
        self._write(line)
        if limited is not None:
            return limited
        try:
            ok = self._check_in_turn(client, user, password, key)
        finally:
            with self._lock:
                self._queued -= 1
        if ok is None:
            return Verdict(False, 1)
        return ALLOWED if ok else DENIED

    def _check_in_turn(self, client: Client, user: bytes, password: bytes, key: bytes) -> bool | None:
        """Run one bcrypt check when it is our turn and settle the budgets; None (a 429) if no turn came."""
        if not self._turns.acquire(timeout=self._limits.wait_seconds):
            with self._lock:
                client.budget.give()
                line = self._note(None, self._clock(),
                                  f"basic auth: a password check waited {self._limits.wait_seconds:g} s for its "
                                  "turn (many logins at once); answering 429 without checking")
            self._write(line)
            return None
        try:
            started = self._clock()
            hashed = self._users.get(user)
            # unknown users pay for one bcrypt too, so timing does not tell which user names exist
            matches = self._checked(password, hashed if hashed is not None else self._dummy)
            ok = matches and hashed is not None
        finally:
            self._turns.release()
        with self._lock:
            now = self._clock()
            if ok:
                client.budget.give()
                self._remember(key, now)
            else:
                self._failures.charge(now, now - started)
        return ok

    def _credentials(self, header: str) -> tuple[bytes, bytes] | None:
        """(user, first 72 bytes of the password) from well-formed Basic credentials; None otherwise."""
        if len(header) > self._max_header:
            return None
        scheme, _, encoded = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip().encode("ascii"), validate=True)
        except (binascii.Error, ValueError):  # UnicodeEncodeError is a ValueError
            return None
        user, sep, password = decoded.partition(b":")
        if not sep:
            return None
        return user, password[:_PASSWORD_BYTES]

    def _cached(self, key: bytes, now: float) -> bool:
        expires = self._cache.get(key)
        if expires is None:
            return False
        if expires <= now:
            del self._cache[key]
            return False
        self._remember(key, now)
        return True

    def _remember(self, key: bytes, now: float) -> None:
        self._cache[key] = now + _CACHE_SECONDS
        self._cache.move_to_end(key)
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)

    def _admit(self, client: Client, now: float) -> tuple[Verdict | None, str | None]:
        """Take one check from ``client``'s budget and a place in the queue; a 429 verdict (and maybe a log
        line) if over a limit."""
        if not client.budget.take(now):
            line = self._note(client, now, f"basic auth: too many failed logins from {client.key}; "
                                           "answering 429 without checking passwords")
            return Verdict(False, _whole_seconds(client.budget.seconds_until(now, 1.0))), line
        wait = self._failures.seconds_until(now, 0.0)
        if wait > 0:
            client.budget.give()
            line = self._note(None, now, "basic auth: failed logins used their CPU budget "
                                         f"({self._limits.global_per_second:g} s of bcrypt a second); answering "
                                         "429 to credentials not seen before, cached ones still pass")
            return Verdict(False, _whole_seconds(wait)), line
        if self._queued >= self._limits.concurrent + self._limits.queue:
            client.budget.give()
            line = self._note(None, now, f"basic auth: {self._queued} password checks running or waiting; "
                                         "answering 429 without checking (many logins at once)")
            return Verdict(False, 1), line
        self._queued += 1
        return None, None

    def _checked(self, password: bytes, hashed: bytes) -> bool:
        try:
            return self._check(password, hashed)
        except ValueError as err:  # the bcrypt library refuses some inputs; never a 500 or a traceback
            with self._lock:
                line = self._note(None, self._clock(), f"basic auth: bcrypt refused a check ({type(err).__name__})")
            self._write(line)
            return False

    def _note(self, client: Client | None, now: float, line: str) -> str | None:
        """``line`` if the throttle lets it through (with a count of lines held back), else None."""
        if not self._log.allow(client, now):
            return None
        if self._log.suppressed:
            line += f" ({self._log.suppressed} similar lines suppressed)"
            self._log.suppressed = 0
        return line

    @staticmethod
    def _write(line: str | None) -> None:
        if line is not None:
            log.warning("%s", line)


def _whole_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds))


def _cost(hashed: str) -> int:
    return int(hashed[4:6])


def _usual_cost(hashes: Iterable[str]) -> int:
    """The cost most of ``hashes`` have, the highest on a tie; 10 (htpasswd's) when there are none."""
    costs = Counter(_cost(hashed) for hashed in hashes)
    return max(costs, key=lambda c: (costs[c], c)) if costs else 10


def dummy_hash(hashes: Iterable[str]) -> bytes:
    """A bcrypt hash no password matches, at the usual cost of ``hashes``, for checking unknown users.

    Checking an unknown user against it costs what checking most users costs. It is random (a real salt
    and 31 random hash characters, 2**-184 odds of any match) rather than the hash of a known password,
    and needs no hashing to make, whatever the cost.
    """
    tail = "".join(secrets.choice(_BCRYPT_ALPHABET) for _ in range(31))
    return bcrypt.gensalt(rounds=_usual_cost(hashes)) + tail.encode()


def _describe_costs(hashes: Iterable[str]) -> str:
    hashes = list(hashes)
    costs = sorted({_cost(hashed) for hashed in hashes})
    if len(costs) == 1:
        return f"bcrypt cost {costs[0]}"
    usual = _usual_cost(hashes)
    others = ", ".join(str(c) for c in costs if c != usual)
    return (f"bcrypt costs differ: unknown names are checked at cost {usual}, so users at cost {others} "
            "can be told from unknown names by timing; use one cost")


def _error(path: str, key: str, what: str) -> ValueError:
    return ValueError(f"web config {path}: {key}: {' '.join(what.split())}")


def _readable(path: str, key: str, filename: str) -> None:
    try:
        with open(filename, "rb") as f:
            f.read(1)
    except OSError as err:
        raise _error(path, key, f"cannot read {filename}: {err.strerror or type(err).__name__}") from None


def _string(path: str, key: str, raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise _error(path, key, f"expected a non-empty string, got {type(raw).__name__}")
    return raw


def _mapping(path: str, key: str, raw: object) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _error(path, key, f"expected a mapping, got {type(raw).__name__}")
    return raw


def _check_keys(path: str, prefix: str, raw: Mapping[str, Any], known: Iterable[str]) -> None:
    known = tuple(known)
    for name in raw:
        key = f"{prefix}{name}"
        if key in _UNSUPPORTED:
            raise _error(path, key, _UNSUPPORTED[key])
        if name not in known:
            raise _error(path, key, f"unknown key; expected one of {', '.join(known)}")


def _tls(path: str, raw: object) -> TLSServerConfig | None:
    section = _mapping(path, "tls_server_config", raw)
    _check_keys(path, "tls_server_config.", section, _TLS_KEYS)
    cert, key = section.get("cert_file"), section.get("key_file")
    if not cert and not key:
        if section:
            raise _error(path, "tls_server_config.cert_file", "required (with key_file) to serve TLS")
        return None
    if not key:
        raise _error(path, "tls_server_config.key_file", "required together with cert_file")
    if not cert:
        raise _error(path, "tls_server_config.cert_file", "required together with key_file")
    client_auth = _string(path, "tls_server_config.client_auth_type", section.get("client_auth_type", "NoClientCert"))
    if client_auth not in _CLIENT_AUTH:
        raise _error(path, "tls_server_config.client_auth_type",
                     f"expected one of {', '.join(_CLIENT_AUTH)}; got {client_auth!r}")
    ca = section.get("client_ca_file")
    ca_file = None if ca is None else _string(path, "tls_server_config.client_ca_file", ca)
    if client_auth != "NoClientCert" and ca_file is None:
        raise _error(path, "tls_server_config.client_ca_file", f"required by client_auth_type {client_auth}")
    if client_auth == "NoClientCert" and ca_file is not None:
        raise _error(path, "tls_server_config.client_auth_type",
                     "client_ca_file is set but NoClientCert would not check client certificates; "
                     "use RequireAndVerifyClientCert")
    versions = {}
    for name, default in (("min_version", "TLS12"), ("max_version", None)):
        value = section.get(name, default)
        if value is not None:
            value = _string(path, f"tls_server_config.{name}", value)
            if value not in _TLS_VERSIONS:
                raise _error(path, f"tls_server_config.{name}",
                             f"expected one of {', '.join(_TLS_VERSIONS)}; got {value!r}")
        versions[name] = value
    min_version, max_version = versions["min_version"], versions["max_version"]
    assert min_version is not None
    if max_version is not None and _TLS_VERSIONS[max_version] < _TLS_VERSIONS[min_version]:
        raise _error(path, "tls_server_config.max_version", f"{max_version} is below min_version {min_version}")
    return TLSServerConfig(cert_file=_string(path, "tls_server_config.cert_file", cert),
                           key_file=_string(path, "tls_server_config.key_file", key),
                           client_auth_type=client_auth, client_ca_file=ca_file,
                           min_version=min_version, max_version=max_version)


def _users(path: str, raw: object) -> dict[str, str]:
    section = _mapping(path, "basic_auth_users", raw)
    users: dict[str, str] = {}
    for user, hashed in section.items():
        if not isinstance(user, str) or not user or ":" in user:
            # the name itself is not a secret, but keep the message free of whatever was typed
            raise _error(path, "basic_auth_users", "user names must be non-empty strings without ':'")
        if not isinstance(hashed, str) or not _BCRYPT.match(hashed):
            raise _error(path, f"basic_auth_users.{user}",
                         "expected a bcrypt hash ($2a$, $2b$ or $2y$, e.g. from htpasswd -nBC 10 \"\"), "
                         "not a plain password")
        if _cost(hashed) not in _COSTS:
            raise _error(path, f"basic_auth_users.{user}",
                         f"bcrypt cost {_cost(hashed)} is outside {_COSTS.start}..{_COSTS.stop - 1}")
        if hashed[28] not in _SALT_LAST:
            raise _error(path, f"basic_auth_users.{user}", "not a valid bcrypt hash (its salt does not decode)")
        users[user] = hashed
    return users


def load_web_config(path: str) -> WebConfig:
    """Read and check ``path``; raises ValueError("web config PATH: KEY: what is wrong") on bad input."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise ValueError(f"web config {path}: cannot read: {err.strerror or type(err).__name__}") from None
    except UnicodeDecodeError:
        raise ValueError(f"web config {path}: not UTF-8 text") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ValueError(f"web config {path}: invalid YAML{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"web config {path}: expected a mapping with {', '.join(_TOP_KEYS)}")
    _check_keys(path, "", raw, _TOP_KEYS)
    _mapping(path, "http_server_config", raw.get("http_server_config"))
    config = WebConfig(path=path, tls=_tls(path, raw.get("tls_server_config")),
                       basic_auth_users=_users(path, raw.get("basic_auth_users")),
                       ignored=("http_server_config",) if raw.get("http_server_config") else ())
    config.ssl_context()  # loads the certificate and key now, so a bad one fails at start
    return config
