"""Keep secrets out of every string dbrev shows: logs, errors, status, CLI output.

Two layers: any ``scheme://user:password@`` userinfo (up to the last ``@`` of
the URL, so a password with raw ``@`` or ``/`` is masked whole however the URL
splits) and ``password=...`` conninfo fragment is masked by pattern, and every
password dbrev has parsed out of a URL is registered here and masked wherever
it appears verbatim, raw or URL-encoded (a driver may echo it in an unexpected
place).  Secrets shorter than 6 characters are masked where they stand alone
(not inside a longer word), so that a two-letter password is masked too
without turning every word that contains it into asterisks.
"""

from __future__ import annotations

import re
import threading

MASK = "***"

_lock = threading.Lock()
_secrets: set[str] = set()
_short: dict[str, re.Pattern] = {}
SHORT = 6

# user:password@ up to the URL's last "@" (a raw "@", "/" or "#" in a password must not end the match)
_URL_USERINFO = re.compile(r"(?P<pre>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/?#@\s'\"]*:)(?P<pw>[^\s'\"]*)@")
_CONNINFO_PW = re.compile(r"(?i)\b(password|passwd|pwd)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s&;,]+)")


def register_secret(secret: str | None) -> None:
    """Remember a secret so that it is masked wherever it appears later."""
    if not secret:
        return
    from urllib.parse import quote

    # URL-encoded forms too: it is how it appears inside a URL.
    forms = {secret, quote(secret, safe=""), quote(secret)}
    with _lock:
        for f in forms:
            if len(f) >= SHORT:
                _secrets.add(f)
            else:
                _short[f] = re.compile(r"(?<![A-Za-z0-9])" + re.escape(f) + r"(?![A-Za-z0-9])")


def redact(text) -> str:
    if text is None:
        return ""
    s = str(text)
    s = _URL_USERINFO.sub(lambda m: f"{m.group('pre')}{MASK}@", s)
    s = _CONNINFO_PW.sub(lambda m: f"{m.group(1)}={MASK}", s)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
        short = sorted(_short.items(), key=lambda kv: len(kv[0]), reverse=True)
    for sec in secrets:
        if sec in s:
            s = s.replace(sec, MASK)
    for sec, pattern in short:
        if sec in s:
            s = pattern.sub(MASK, s)
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
