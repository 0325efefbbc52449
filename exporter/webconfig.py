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

Successful bcrypt checks are cached for a few minutes (bcrypt is slow on purpose; exporter-toolkit caches
too), keyed by an HMAC of user and password under a per-process random key: the plain password is never
stored. Passwords and hashes are never logged, and a 401 never echoes what the client sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import bcrypt

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
# a real bcrypt hash, checked against for unknown users so that they take as long as known ones
_DUMMY_HASH = bcrypt.hashpw(b"infermeter-no-such-user", bcrypt.gensalt(rounds=10))
_CACHE_SECONDS = 300.0
_CACHE_SIZE = 256


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
            parts.append(f"basic auth on ({len(self.basic_auth_users)} user(s); /healthz stays open)")
        else:
            parts.append("basic auth off")
        if self.ignored:
            parts.append(f"ignored: {', '.join(self.ignored)}")
        return ", ".join(parts)

    def protect(self, app: WSGIApp) -> WSGIApp:
        """``app`` behind basic auth when users are configured (``/healthz`` stays open); else ``app`` itself."""
        if not self.basic_auth_users:
            return app
        return _BasicAuth(app, self.basic_auth_users)


class _BasicAuth:
    def __init__(self, app: WSGIApp, users: Mapping[str, str]) -> None:
        self._app = app
        self._users = {user.encode(): hashed.encode() for user, hashed in users.items()}
        self._key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "/") in OPEN_PATHS or self._authorized(environ.get("HTTP_AUTHORIZATION", "")):
            return self._app(environ, start_response)
        start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                            ("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')])
        return [b"unauthorized\n"]

    def _authorized(self, header: str) -> bool:
        scheme, _, encoded = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            # WSGI gives headers as latin-1 str; base64 is ASCII
            decoded = base64.b64decode(encoded.strip().encode("latin-1"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        if not sep:
            return False
        key = hmac.new(self._key, user + b"\0" + password, hashlib.sha256).digest()
        now = time.monotonic()
        with self._lock:
            expires = self._cache.get(key)
            if expires is not None and expires > now:
                self._cache.move_to_end(key)
                return True
        hashed = self._users.get(user)
        # unknown users pay for one bcrypt too, so timing does not tell which user names exist
        ok = bcrypt.checkpw(password, hashed if hashed is not None else _DUMMY_HASH) and hashed is not None
        if ok:
            with self._lock:
                self._cache[key] = now + _CACHE_SECONDS
                self._cache.move_to_end(key)
                while len(self._cache) > _CACHE_SIZE:
                    self._cache.popitem(last=False)
        return ok


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
