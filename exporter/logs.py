"""Logging for the exporter: one line per record where possible, and never a huge one.

A log line can carry text an engine chose (a model name, a config.json value, an exception raised on
its data), so every record is bounded when it is rendered: the message to MESSAGE_CHARS, a traceback
to its last TRACEBACK_CHARS (each of its lines to LINE_CHARS), the whole record to RECORD_CHARS. What is
cut is replaced by a visible marker saying how much.

    from exporter import logs
    logs.configure("info")
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from logging import _SysExcInfoType

FORMAT = "%(asctime)s %(levelname)s %(message)s"
MESSAGE_CHARS = 2000
LINE_CHARS = 500
TRACEBACK_CHARS = 6000
RECORD_CHARS = 9000  # message + traceback + the time and level around them


def cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with a marker saying how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text) - limit} more characters]"


def cut_traceback(text: str, limit: int = TRACEBACK_CHARS) -> str:
    """A traceback with each line cut to LINE_CHARS and, when still longer than ``limit``, only its last
    lines (the innermost frames and the exception, what explains it) after a marker."""
    lines = [cut(line, LINE_CHARS) for line in text.splitlines()]
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        if size + len(line) + 1 > limit:
            break
        kept.append(line)
        size += len(line) + 1
    left_out = len(lines) - len(kept)
    if left_out:
        kept.append(f"...[{left_out} earlier traceback lines left out]")
    return "\n".join(reversed(kept))


class BoundedFormatter(logging.Formatter):
    """A Formatter whose records are never longer than RECORD_CHARS (see the module docstring)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = cut(record.message, MESSAGE_CHARS)
        return super().formatMessage(record)

    def formatException(self, ei: _SysExcInfoType) -> str:
        return cut_traceback(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return cut_traceback(super().formatStack(stack_info))

    def format(self, record: logging.LogRecord) -> str:
        return cut(super().format(record), RECORD_CHARS)


_installed: logging.Handler | None = None


def configure(level: str | int, stream: TextIO | None = None) -> logging.Handler:
    """Log records of ``level`` and above (``"info"``, ``"DEBUG"``, ``logging.WARNING``) to ``stream``
    (standard error by default) through a BoundedFormatter; calling it again replaces the handler it
    installed before. Returns the handler."""
    global _installed
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(BoundedFormatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    _installed = handler
    return handler
