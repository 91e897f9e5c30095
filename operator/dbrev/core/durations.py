"""Durations: the one grammar for every duration dbrev reads (pure).

A duration is one or more ``<number><unit>`` parts, units ``d``, ``h``, ``m``, ``s``: ``30s``,
``10m``, ``1h30m``, ``30d``, ``1.5h``.  The CRD validates with :data:`DURATION_PATTERN`, the
operator's spec and the CLI's ``--older-than`` parse with :func:`parse_duration`.
"""

from __future__ import annotations

import re

UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(d|h|m|s))+$"
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(d|h|m|s)")
EXAMPLES = "e.g. 30s, 10m, 1h30m or 30d"


def parse_duration(text: str) -> float:
    """``'1h30m'`` -> 5400.0 seconds; ValueError (naming the grammar) for anything else."""
    total = 0.0
    pos = 0
    for m in _PART.finditer(text or ""):
        if m.start() != pos:
            break
        total += float(m.group(1)) * UNITS[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        raise ValueError(f"invalid duration {text!r}: use {EXAMPLES}")
    return total
