"""Values an engine supplies (model names, versions, paths, label text), made safe to export and to log.

An engine is a separate program infermeter only reads; a broken or hostile one can serve any text.
What reaches a label is bounded in length and holds printable characters only (a lone surrogate cannot
even be encoded as UTF-8, and a control character breaks log lines and dashboards); what reaches a log
line is a short repr. Each identity field gets its own rule (``label``, ``version``, ``path``).
"""

from __future__ import annotations

import hashlib
import re

# An exported label value (``model``, ``spec_source``): real model ids and checkpoint paths are far
# shorter (``meta-llama/Llama-3.1-8B-Instruct`` is 32; a Hugging Face cache snapshot path about 120).
LABEL_CHARS = 200
DIGEST_CHARS = 12
# A version is a short token: ``0.10.1.1``, ``3.3.6-dev0``, ``0.4.9.post2``, ``0.11.0rc2.dev146+g1a2b3c4``.
VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_~-]{0,63}")
# A filesystem path (the model directory an engine reports): PATH_MAX on Linux.
PATH_CHARS = 4096
# An engine-supplied value in a log line or error message.
SHORT_CHARS = 80


def _clean(text: str) -> str:
    """``text`` with every character that is not printable (controls, format characters, surrogates,
    unassigned code points) replaced by U+FFFD."""
    return "".join(c if c.isprintable() else "\ufffd" for c in text)


def digest(text: str) -> str:
    """A short, stable fingerprint of ``text`` (what tells apart two values cut to the same prefix)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:DIGEST_CHARS]


def label(text: str, limit: int = LABEL_CHARS) -> str:
    """``text`` as a label value: unchanged when printable and at most ``limit`` characters, else its
    printable start, ``...`` and a digest of the whole value, ``limit`` characters in all (two different
    values never share a label, and the start still reads as the name)."""
    if len(text) <= limit and text.isprintable():
        return text
    suffix = "..." + digest(text)
    return _clean(text[: limit - len(suffix)]) + suffix


def version(text: str | None) -> str | None:
    """``text`` when it looks like a version (``VERSION``), else None: a cut or hashed version would read as
    a real one, so anything else is refused."""
    return text if text is not None and VERSION.fullmatch(text) else None


def path(text: str | None) -> str | None:
    """``text`` when it can be a filesystem path (non-empty, at most PATH_CHARS, printable: no NUL), else None."""
    return text if text and len(text) <= PATH_CHARS and text.isprintable() else None


def short(value: object, limit: int = SHORT_CHARS) -> str:
    """A repr of ``value`` for a log line or an error message, at most about ``limit`` characters."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    if isinstance(value, int) and value.bit_length() > 4 * limit:  # repr() refuses huge integers
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, str | int | float | bool) or value is None:
        text = repr(value)
        return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
    return f"a {type(value).__name__}"  # containers are described, never rendered whole
