"""Keep secrets out of every string dbrev shows: logs, errors, status, CLI output.

Two layers: any ``scheme://user:password@`` userinfo and ``password=...``
conninfo fragment is masked by pattern, and every password dbrev has parsed
out of a URL is registered here and masked wherever it appears verbatim
(a driver may echo it in an unexpected place).
"""

from __future__ import annotations

import re
import threading

MASK = "***"

_lock = threading.Lock()
_secrets: set[str] = set()

_URL_USERINFO = re.compile(r"(?P<pre>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/?#@\s]*:)(?P<pw>[^@\s/]*)@")
_CONNINFO_PW = re.compile(r"(?i)\b(password|passwd|pwd)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s&;,]+)")


def register_secret(secret: str | None) -> None:
    """Remember a secret so that it is masked wherever it appears later."""
    if secret and len(secret) >= 3:
        with _lock:
            _secrets.add(secret)
            # URL-encoded form too: it is how it appears inside a URL.
            from urllib.parse import quote

            q = quote(secret, safe="")
            if q != secret:
                _secrets.add(q)


def redact(text) -> str:
    if text is None:
        return ""
    s = str(text)
    s = _URL_USERINFO.sub(lambda m: f"{m.group('pre')}{MASK}@", s)
    s = _CONNINFO_PW.sub(lambda m: f"{m.group(1)}={MASK}", s)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for sec in secrets:
        if sec in s:
            s = s.replace(sec, MASK)
    return s


def redact_obj(obj):
    """Redact every string inside a JSON-like structure."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v) for v in obj]
    return obj
