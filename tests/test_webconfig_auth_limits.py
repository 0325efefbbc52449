"""Basic auth cannot be used to make the exporter burn CPU (issue 12): bcrypt checks are counted, bounded
per client and in all, any malformed or oversized credential is a plain 401, and unknown user names cost
what known ones cost. In-process through the WSGI wrapper; tests/test_webconfig_auth_flood.py floods a real
exporter process."""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from exporter.auth_limits import DEFAULT_LIMITS, AuthLimits, client_key
from exporter.webconfig import BasicAuth, WebConfig, load_web_config

USER = "prometheus"
PASSWORD = "s3cret-Pa55word-7781"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
LONG_PASSWORD = "L" * 72  # bcrypt's longest
LONG_HASH = bcrypt.hashpw(LONG_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


def basic(user: str | bytes, password: str | bytes) -> str:
    raw = (user.encode() if isinstance(user, str) else user) + b":" + \
        (password.encode() if isinstance(password, str) else password)
    return "Basic " + base64.b64encode(raw).decode()


GOOD = basic(USER, PASSWORD)


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]


def call(protected: Any, header: str | None, addr: str = "10.0.0.1", path: str = "/metrics"
         ) -> tuple[int, dict[str, str], bytes]:
    """One request through the WSGI wrapper: (status code, headers, body)."""
    environ: dict[str, Any] = {"PATH_INFO": path, "REMOTE_ADDR": addr, "REQUEST_METHOD": "GET"}
    if header is not None:
        environ["HTTP_AUTHORIZATION"] = header
    answer: list[tuple[str, list[tuple[str, str]]]] = []
    body = b"".join(protected(environ, lambda status, headers: answer.append((status, headers))))
    status, headers = answer[0]
    return int(status.split()[0]), dict(headers), body


def web_config(tmp_path: Path, users: dict[str, str]) -> WebConfig:
    lines = "".join(f"  {user}: '{hashed}'\n" for user, hashed in users.items())
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n{lines}")
    return load_web_config(str(path))


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The hash of every bcrypt check run (through bcrypt.checkpw), in order."""
    real = bcrypt.checkpw
    seen: list[bytes] = []

    def counting(password: bytes, hashed: bytes) -> bool:
        seen.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    return seen


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the three defects of issue 12, each through the public path (load_web_config(...).protect) ---

def test_a_password_over_72_bytes_is_a_401_not_a_500_and_logs_nothing(
        tmp_path: Path, checks: list[bytes], caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    protected = web_config(tmp_path, {USER: HASH, "long": LONG_HASH}).protect(app)
    caplog.set_level(logging.DEBUG)
    for user, password in [(USER, "x" * 73), (USER, PASSWORD + "y" * 100), ("nobody", "z" * 500),
                           ("long", "M" * 72 + "tail")]:
        status, headers, body = call(protected, basic(user, password))
        assert status == 401 and "WWW-Authenticate" in headers, (user, len(password))
        assert password.encode() not in body
    assert caplog.records == [] and capsys.readouterr().err == ""
    # bcrypt reads 72 bytes: the right 72 and anything after them is the right password, as exporter-toolkit
    # (Go's bcrypt) and htpasswd have it
    assert call(protected, basic("long", LONG_PASSWORD + "anything after 72 bytes"))[0] == 200


def test_unknown_users_are_checked_at_the_cost_of_known_ones(tmp_path: Path, checks: list[bytes]) -> None:
    known = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=5)).decode()
    protected = web_config(tmp_path, {USER: known}).protect(app)
    assert call(protected, basic(USER, "wrong"), addr="10.0.0.1")[0] == 401
    assert call(protected, basic("no-such-user", "wrong"), addr="10.0.0.2")[0] == 401
    assert len(checks) == 2
    known_check, unknown_check = checks
    assert known_check == known.encode()
    assert unknown_check[:7] == b"$2b$05$", unknown_check[:7]  # the cost field: 2**5 rounds, like the user's
    assert unknown_check != known_check


@pytest.mark.parametrize(("costs", "expected"), [
    ((4, 5, 5), 5),  # the cost most users have
    ((6, 4), 6),  # a tie: the highest
    ((4, 4, 4, 6), 4),
])
def test_with_several_costs_unknown_users_cost_what_most_users_cost(
        costs: tuple[int, ...], expected: int, tmp_path: Path, checks: list[bytes]) -> None:
    users = {f"user{i}": bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=cost)).decode() for i, cost in enumerate(costs)}
    config = web_config(tmp_path, users)
    assert call(config.protect(app), basic("no-such-user", "pw"))[0] == 401
    assert len(checks) == 1 and int(checks[0][4:6]) == expected
    others = sorted(set(costs) - {expected})
    assert f"unknown names are checked at cost {expected}" in config.describe()
    assert f"users at cost {', '.join(map(str, others))} can be told from unknown names" in config.describe()


def test_a_flood_from_one_then_two_clients_runs_bcrypt_within_their_budget(
        tmp_path: Path, checks: list[bytes]) -> None:
    protected = web_config(tmp_path, {USER: HASH}).protect(app)
    burst, rate = DEFAULT_LIMITS.client_burst, DEFAULT_LIMITS.client_per_second
    scraper = "10.0.0.1"
    assert call(protected, GOOD, addr=scraper)[0] == 200
    assert len(checks) == 1  # the scraper's one check, cached from now on

    for attackers in (["10.0.1.1"], ["10.0.2.1", "10.0.2.2"]):
        before = len(checks)
        statuses: list[int] = []
        started = time.monotonic()
        for i in range(60):
            for attacker in attackers:
                status, headers, _ = call(protected, basic(USER, f"guess-{i}"), addr=attacker)
                statuses.append(status)
                if status == 429:
                    assert int(headers["Retry-After"]) >= 1
            if i % 5 == 0:
                # the cached scraper is never limited, from its own address nor from an attacker's (a NAT)
                assert call(protected, GOOD, addr=scraper)[0] == 200
                assert call(protected, GOOD, addr=attackers[0])[0] == 200
        elapsed = time.monotonic() - started
        ran = len(checks) - before
        allowed = len(attackers) * (burst + rate * elapsed)
        assert ran <= allowed, f"{ran} bcrypt checks from {attackers}; the budget allows {allowed:.1f}"
        assert statuses.count(401) == ran and statuses.count(429) == len(statuses) - ran
        assert ran >= len(attackers) * burst  # the budget was offered, not just refused


def test_checks_run_one_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    running, most = 0, 0
    lock = threading.Lock()

    def slow_check(password: bytes, hashed: bytes) -> bool:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return False

    monkeypatch.setattr(bcrypt, "checkpw", slow_check)
    protected = web_config(tmp_path, {USER: HASH}).protect(app)
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda a=f"10.0.3.{n}": statuses.append(call(protected, basic(USER, "x"),
                                                                                   addr=a)[0]))
               for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert statuses == [401] * 6  # 6 x 50 ms fit in the 1 s wait: each got its turn
    assert most == DEFAULT_LIMITS.concurrent == 1


# --- malformed input: always a 401, and no bcrypt for what is not well-formed ---

CHEAP_401 = {
    "none": None,
    "empty": "",
    "bearer": "Bearer abc.def.ghi",
    "scheme only": "Basic",
    "scheme and space": "Basic ",
    "not base64": "Basic !!notbase64",
    "bad padding": GOOD[:-1],
    "no colon": "Basic " + base64.b64encode(b"justauser").decode(),
    "huge": "Basic " + base64.b64encode(b"u:" + b"p" * 60_000).decode(),
    "huge garbage": "Basic " + "A" * 1_000_000,
    "latin-1": "Basic \xe9\xff\xe0",
    "beyond latin-1": "Basic \u20ac\u2603",
    "digest": 'Digest username="prometheus", realm="infermeter"',
    "two headers joined": GOOD + "," + GOOD,  # how a server folds a repeated header
}
WELL_FORMED_401 = {
    "empty user and password": basic(b"", b""),
    "non-UTF-8 user": basic(b"\xff\xfe\x00", b"pw"),
    "NUL bytes in password": basic(USER, b"\x00pass\x00word"),
    "all 256 bytes": basic(USER, bytes(range(256))),
    "colon in password": basic(USER, PASSWORD + ":" + PASSWORD),
}


def test_malformed_credentials_are_401_without_bcrypt(tmp_path: Path, checks: list[bytes]) -> None:
    protected = web_config(tmp_path, {USER: HASH}).protect(app)
    for name, header in CHEAP_401.items():
        status, headers, body = call(protected, header)
        assert status == 401 and headers["WWW-Authenticate"].startswith('Basic realm="infermeter"'), name
        assert body == b"unauthorized\n", name
    assert checks == []


def test_well_formed_wrong_credentials_of_any_bytes_are_401(tmp_path: Path, checks: list[bytes]) -> None:
    protected = web_config(tmp_path, {USER: HASH}).protect(app)
    for n, (name, header) in enumerate(WELL_FORMED_401.items()):
        assert call(protected, header, addr=f"10.0.4.{n}")[0] == 401, name
    assert len(checks) == len(WELL_FORMED_401)


def test_a_check_that_raises_is_a_401_with_one_bounded_line(caplog: pytest.LogCaptureFixture) -> None:
    def refusing(password: bytes, hashed: bytes) -> bool:
        raise ValueError(f"refused {password!r}")

    protected = BasicAuth(app, {USER: HASH}, check=refusing)
    with caplog.at_level(logging.WARNING):
        for n in range(20):
            assert call(protected, basic(USER, f"secret-{n}"), addr=f"10.0.5.{n}")[0] == 401
    assert len(caplog.records) == 1 and "bcrypt refused a check (ValueError)" in caplog.text
    assert "secret-" not in caplog.text and "Traceback" not in caplog.text


# --- the limits, on a fake clock ---

def failing_auth(clock: FakeClock, limits: AuthLimits = DEFAULT_LIMITS, seconds_per_check: float = 0.0,
                 ) -> tuple[BasicAuth, list[bytes]]:
    """A BasicAuth whose checks are counted, succeed only for PASSWORD and take ``seconds_per_check``."""
    seen: list[bytes] = []

    def check(password: bytes, hashed: bytes) -> bool:
        seen.append(hashed)
        clock.now += seconds_per_check
        return password == PASSWORD.encode() and hashed == HASH.encode()

    return BasicAuth(app, {USER: HASH}, limits=limits, clock=clock, check=check), seen


def test_a_client_budget_is_a_burst_then_one_a_second() -> None:
    clock = FakeClock()
    auth, seen = failing_auth(clock)
    statuses = [call(auth, basic(USER, f"g{i}"))[0] for i in range(8)]
    assert statuses == [401] * 5 + [429] * 3 and len(seen) == 5
    status, headers, body = call(auth, basic(USER, "again"))
    assert (status, headers["Retry-After"], body) == (429, "1", b"too many login attempts; retry later\n")
    clock.now += 1.0
    assert [call(auth, basic(USER, f"h{i}"))[0] for i in range(2)] == [401, 429]
    clock.now += 100.0  # refills to the burst, not beyond
    assert [call(auth, basic(USER, f"k{i}"))[0] for i in range(7)] == [401] * 5 + [429] * 2
    assert len(seen) == 11
    # another client has its own budget; a right password gives its token back
    assert call(auth, GOOD, addr="10.9.9.9")[0] == 200
    assert [call(auth, basic(USER, f"m{i}"), addr="10.9.9.9")[0] for i in range(6)] == [401] * 5 + [429]


def test_failed_checks_of_all_clients_share_a_cpu_budget_that_cached_credentials_never_meet() -> None:
    clock = FakeClock()
    limits = DEFAULT_LIMITS
    auth, seen = failing_auth(clock, seconds_per_check=0.5)
    assert call(auth, GOOD, addr="10.0.0.1")[0] == 200  # cached before the flood
    started = clock.now
    statuses = [call(auth, basic(USER, "wrong"), addr=f"10.1.{n // 250}.{n % 250}")[0] for n in range(40)]
    spent = 0.5 * (len(seen) - 1)
    # within the budget, plus the one check that went over it
    assert spent <= limits.global_seconds + limits.global_per_second * (clock.now - started) + 0.5
    assert statuses.count(401) == len(seen) - 1 >= 4 and statuses.count(429) == 40 - statuses.count(401)
    assert call(auth, GOOD, addr="10.0.0.1")[0] == 200  # cached: never limited
    status, headers, _ = call(auth, basic("newcomer", "pw"), addr="10.2.0.1")
    assert status == 429 and int(headers["Retry-After"]) >= 1  # a credential not seen before waits
    clock.now += int(headers["Retry-After"])
    assert call(auth, basic("newcomer", "pw"), addr="10.2.0.1")[0] == 401


def _blocking_check() -> tuple[Callable[[bytes, bytes], bool], threading.Semaphore, threading.Event]:
    """A bcrypt stand-in that holds each check until released (up to 5 s) and then refuses it; the
    semaphore counts the checks that began."""
    release = threading.Event()
    entered = threading.Semaphore(0)

    def blocking(password: bytes, hashed: bytes) -> bool:
        entered.release()
        release.wait(5)
        return False

    return blocking, entered, release


def test_a_busy_checker_answers_429_without_waiting_long() -> None:
    blocking, entered, release = _blocking_check()
    auth = BasicAuth(app, {USER: HASH}, limits=AuthLimits(wait_seconds=0.1), check=blocking)
    first = threading.Thread(target=call, args=(auth, basic(USER, "a"), "10.0.0.1"))
    first.start()
    assert entered.acquire(timeout=5)
    started = time.monotonic()
    status, headers, _ = call(auth, basic(USER, "b"), "10.0.0.2")
    waited = time.monotonic() - started
    release.set()
    first.join(5)
    assert (status, headers["Retry-After"]) == (429, "1") and waited < 2.0
    # the refused request did not cost that client its budget
    assert [call(auth, basic(USER, f"c{i}"), "10.0.0.2")[0] for i in range(6)] == [401] * 5 + [429]


def test_only_a_few_checks_may_wait_for_their_turn() -> None:
    blocking, entered, release = _blocking_check()
    limits = AuthLimits(wait_seconds=5.0, queue=2)
    auth = BasicAuth(app, {USER: HASH}, limits=limits, check=blocking)
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda a=f"10.0.6.{n}": statuses.append(call(auth, basic(USER, "x"), a)[0]))
               for n in range(limits.concurrent + limits.queue)]
    for thread in threads:
        thread.start()
    assert entered.acquire(timeout=5)  # one is checking; give the others time to queue behind it
    deadline = time.monotonic() + 5
    while auth._queued < len(threads) and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    status, headers, _ = call(auth, basic(USER, "y"), "10.0.7.1")
    assert (status, headers["Retry-After"]) == (429, "1") and time.monotonic() - started < 1.0
    release.set()
    for thread in threads:
        thread.join(10)
    assert statuses == [401] * len(threads) and auth._queued == 0


def test_the_client_table_is_bounded_and_ipv6_clients_count_per_64() -> None:
    clock = FakeClock()
    auth, _ = failing_auth(clock, limits=AuthLimits(clients=16))
    for n in range(1000):
        call(auth, basic(USER, "x"), addr=f"10.{n // 250}.{n % 250}.1")
    assert len(auth._clients) == 16
    for n in range(5):
        assert call(auth, basic(USER, f"a{n}"), addr=f"2001:db8::{n + 1}")[0] == 401
    assert call(auth, basic(USER, "b"), addr="2001:db8::ffff:1")[0] == 429  # same /64
    assert call(auth, basic(USER, "c"), addr="2001:db8:0:1::1")[0] == 401  # the next /64
    assert client_key("::ffff:192.0.2.7") == client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key("not an address" * 20) == ("not an address" * 20)[:64]


def test_a_cached_credential_stays_cached_while_used() -> None:
    clock = FakeClock()
    auth, seen = failing_auth(clock)
    for _ in range(20):  # a scrape every 200 s for over an hour: one check in all
        assert call(auth, GOOD)[0] == 200
        clock.now += 200
    assert len(seen) == 1
    clock.now += 301  # unused for longer than the cache keeps it
    assert call(auth, GOOD)[0] == 200 and len(seen) == 2


def test_limited_clients_are_logged_once_a_period_each_and_a_few_lines_in_all(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limits = DEFAULT_LIMITS
    auth, _ = failing_auth(clock)
    caplog.set_level(logging.WARNING)
    for n in range(100):
        call(auth, basic("who-" + USER, f"pw-{n}"), addr="10.0.0.7")
        clock.now += 0.1
    assert caplog.text.count("too many failed logins from 10.0.0.7") == 1
    clock.now += limits.log_period_seconds
    call(auth, basic(USER, "again"), addr="10.0.0.7")  # its budget refilled: a plain 401
    for n in range(int(limits.client_burst) + 1):
        call(auth, basic(USER, f"again-{n}"), addr="10.0.0.7")
    assert caplog.text.count("too many failed logins from 10.0.0.7") == 2
    caplog.clear()
    clock.now += limits.log_period_seconds  # the overall line budget is full again
    for n in range(200):  # 200 clients each over budget at once
        for i in range(7):
            call(auth, basic(USER, f"pw-{i}"), addr=f"10.8.{n // 250}.{n % 250}")
    assert len(caplog.records) == limits.log_lines
    clock.now += limits.log_period_seconds
    for i in range(7):
        call(auth, basic(USER, f"pw-{i}"), addr="10.9.0.0")
    assert "similar lines suppressed" in caplog.records[-1].getMessage()
    assert all(record.levelno == logging.WARNING and len(record.getMessage()) < 300 for record in caplog.records)
    assert "pw-" not in caplog.text and "who-" not in caplog.text and USER not in caplog.text


@pytest.fixture(autouse=True)
def _no_threads_left() -> Iterator[None]:
    before = threading.active_count()
    yield
    assert threading.active_count() <= before
