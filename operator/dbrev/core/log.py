"""JSON-lines logging with the rollback runbook's standards built in.

The standards (``rollback-directive.md``), kept as helpers so no call site has
to remember field names:

* DEBUG entry/exit of an operation with ``from_revision`` / ``to_revision``
  (:func:`timed`);
* INFO state transitions with ``status`` (:func:`state_transition`);
* WARNING for operations slower than 1 s with ``duration_ms`` and
  ``operation`` (:func:`timed`);
* ERROR with ``error_type``, ``error_message`` and the stack trace
  (:func:`log_error`);
* ``rollback_triggered(reason, from_version, to_version)`` and
  ``rollback_executed(from_version, to_version, success)`` records.

Every record is one JSON object per line, carries whatever
:func:`log_context` bound (the resource's namespace/name in the operator, a
run id) and passes through :func:`dbrev.core.redact.redact`.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
import traceback
from datetime import datetime, timezone
from typing import Any, Iterator

from .redact import redact, redact_obj

LOGGER_NAME = "dbrev"
SLOW_OPERATION_MS = 1000.0

logger = logging.getLogger(LOGGER_NAME)

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("dbrev_log_context", default={})

_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
# Kopf attaches its whole settings object and internal flags to every record.
_STANDARD_ATTRS |= {"settings", "k8s_skip"}


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind fields (e.g. namespace, name, run_id) to every record in this context."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def bind_context(**fields: Any) -> None:
    """Bind fields for the rest of this context (a worker process, a task)."""
    _context.set({**_context.get(), **fields})


def current_context() -> dict[str, Any]:
    return dict(_context.get())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(getattr(record, "_dbrev_context", None) or _context.get())
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            etype, evalue, _tb = record.exc_info
            out.setdefault("error_type", etype.__name__)
            out.setdefault("error_message", str(evalue))
            out["stack_trace"] = "".join(traceback.format_exception(*record.exc_info))
        return redact(json.dumps(redact_obj(out), default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """For humans at a terminal: level, message, then the structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in record.__dict__.items()
                  if k not in _STANDARD_ATTRS and not k.startswith("_")}
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{record.levelname.lower()}: {record.getMessage()}" + (f" [{extra}]" if extra else "")
        if record.exc_info and record.exc_info[0] is not None and record.levelno >= logging.ERROR:
            line += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return redact(line)


class _ContextFilter(logging.Filter):
    """Capture the context at emit time (handlers may format on another thread)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "_dbrev_context"):
            record._dbrev_context = _context.get()
        return True


def setup_logging(level: str | int = "INFO", fmt: str = "json", stream=None) -> logging.Handler:
    """Route the ``dbrev`` logger (and Alembic's) to ``stream`` as JSON lines."""
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ContextFilter())
    for name in (LOGGER_NAME, "alembic"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if getattr(h, "_dbrev", False):
                lg.removeHandler(h)
        handler._dbrev = True  # type: ignore[attr-defined]
        lg.addHandler(handler)
        lg.propagate = False
    logger.setLevel(level)
    # Alembic's INFO lines ("Running upgrade a -> b") duplicate our own records.
    logging.getLogger("alembic").setLevel(max(level, logging.WARNING))
    return handler


_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR,
           "CRITICAL": logging.CRITICAL}
_RECORD_KEYS = {"ts", "level", "logger", "message"}


def relay(line: str, log: logging.Logger = logger) -> None:
    """Re-log one line of a worker's output here, redacted, in this process's format.

    The worker's own JSON log records keep their level, logger and fields; any other line (what a
    script printed, a traceback, a C library's message) becomes an INFO record of ``dbrev.worker``
    with ``stream: output``.
    """
    line = redact(line)
    rec = None
    if line.startswith("{"):
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
    if isinstance(rec, dict) and "message" in rec and "level" in rec:
        levelno = _LEVELS.get(str(rec.get("level")).upper(), logging.INFO)
        name = str(rec.get("logger") or LOGGER_NAME)
        fields = {k: v for k, v in rec.items() if k not in _RECORD_KEYS}
        msg = str(rec.get("message"))
    else:
        levelno, name, fields, msg = logging.INFO, f"{LOGGER_NAME}.worker", {"stream": "output"}, line
    # what scripts printed shows at every level, like their own output would
    if name not in (f"{LOGGER_NAME}.script", f"{LOGGER_NAME}.worker") and not log.isEnabledFor(levelno):
        return
    record = logging.LogRecord(name, levelno, "(worker)", 0, msg, (), None)
    for k, v in fields.items():
        if k not in _STANDARD_ATTRS and not k.startswith("_"):
            setattr(record, k, v)
    record._dbrev_context = {}  # the worker's record carries its own context fields
    log.handle(record)


@contextlib.contextmanager
def timed(operation: str, log: logging.Logger = logger, **fields: Any) -> Iterator[dict[str, Any]]:
    """DEBUG entry/exit records; a WARNING when the operation took over 1 s.

    Yields a dict the caller may add result fields to; ``duration_ms`` is set
    on exit.
    """
    result: dict[str, Any] = {}
    log.debug(f"Starting {operation} operation", extra={"operation": operation, **fields})
    t0 = time.perf_counter()
    ok = False
    try:
        yield result
        ok = True
    finally:
        duration_ms = round((time.perf_counter() - t0) * 1000.0, 2)
        result["duration_ms"] = duration_ms
        log.debug(f"Finished {operation} operation",
                  extra={"operation": operation, "duration_ms": duration_ms, "success": ok, **fields})
        if duration_ms > SLOW_OPERATION_MS:
            log.warning(f"Slow {operation} operation",
                        extra={"duration_ms": duration_ms, "operation": operation, **fields})


def state_transition(from_revision: Any, to_revision: Any, status: str, message: str | None = None,
                     **fields: Any) -> None:
    logger.info(message or f"Migration state transition: {status}",
                extra={"from_revision": revs(from_revision), "to_revision": revs(to_revision),
                       "status": status, **fields})


def log_error(message: str, exc: BaseException, **fields: Any) -> None:
    logger.error(message,
                 extra={"error_type": type(exc).__name__, "error_message": redact(str(exc)), **fields},
                 exc_info=(type(exc), exc, exc.__traceback__))


def rollback_triggered(reason: str, from_version: Any, to_version: Any, **fields: Any) -> None:
    logger.warning("Rollback triggered",
                   extra={"event": "rollback_triggered", "reason": reason,
                          "from_version": revs(from_version), "to_version": revs(to_version), **fields})


def rollback_executed(from_version: Any, to_version: Any, success: bool, **fields: Any) -> None:
    (logger.warning if success else logger.error)(
        "Rollback executed" if success else "Rollback failed",
        extra={"event": "rollback_executed", "from_version": revs(from_version),
               "to_version": revs(to_version), "success": success, **fields})


def revs(value: Any) -> Any:
    """Revisions are tuples internally; logs show ``a,b`` (or ``base``)."""
    if isinstance(value, (tuple, list, set, frozenset)):
        from .text import revisions_text

        return revisions_text(value)
    return value
