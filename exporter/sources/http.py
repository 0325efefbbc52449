"""Bounded HTTP GET: a total deadline and a body size cap, so a slow, endless or huge response
can never hold a collection past its deadline."""

from __future__ import annotations

import time
from dataclasses import dataclass

import requests

from exporter.sources import SourceError

CHUNK = 64 * 1024


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes


def get(session: requests.Session, url: str, deadline: float, max_bytes: int,
        accept: str = "*/*") -> Response:
    """GET ``url`` and read the whole body before ``deadline`` (time.monotonic()).

    Raises SourceError with a one-line reason (refused, timed out, too large, ...).
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise SourceError(f"no time left to read {url}")
    try:
        with session.get(url, timeout=(min(remaining, 3.0), remaining), stream=True,
                         headers={"Accept": accept}, allow_redirects=False) as response:
            if _declared_length(response) > max_bytes and "Content-Encoding" not in response.headers:
                raise SourceError(f"response from {url} declares more than {max_bytes} bytes "
                                  "(--max-body-bytes)")
            chunks: list[bytes] = []
            size = 0
            # read1: at most one socket read per chunk, so a body that trickles in a few bytes at a time
            # meets the deadline check below (read(CHUNK) would wait for a whole chunk first).
            while chunk := response.raw.read1(CHUNK, decode_content=True):
                size += len(chunk)
                if size > max_bytes:
                    raise SourceError(f"response from {url} is larger than {max_bytes} bytes "
                                      "(--max-body-bytes)")
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise SourceError(f"reading {url} took longer than the deadline (--timeout)")
            return Response(response.status_code, response.headers.get("Content-Type", ""), b"".join(chunks))
    except SourceError:
        raise
    except requests.exceptions.ConnectTimeout:
        raise SourceError(f"connecting to {url} timed out") from None
    except requests.exceptions.Timeout:
        raise SourceError(f"reading {url} timed out") from None
    except requests.exceptions.ConnectionError as err:
        reason = "connection refused" if "refused" in str(err).lower() else "connection failed"
        raise SourceError(f"{reason}: {url}") from None
    except requests.exceptions.RequestException as err:
        raise SourceError(f"request to {url} failed: {type(err).__name__}") from None


def _declared_length(response: requests.Response) -> int:
    """The Content-Length the server declared (0 when absent or not a number): a body over the cap is
    refused before a byte of it is read."""
    try:
        return int(response.headers.get("Content-Length", "0"))
    except ValueError:
        return 0
