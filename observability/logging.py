"""Structured logging on stdlib ``logging``: one JSON object per line (or key=value text).

``call_id`` and ``tenant`` live in contextvars, so ``bind()`` around a call's handling tags
every record logged inside it, including from tasks it spawns (asyncio copies the context
into each new task) and never leaks into unrelated tasks. They are copied onto each
``LogRecord`` by a record factory, so any handler (not only ours) sees ``record.call_id``
and ``record.tenant``.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import json as _json
import logging
import sys
from collections.abc import Iterator
from typing import IO

__all__ = ["call_id_var", "tenant_var", "bind", "setup_logging", "JsonFormatter", "KeyValueFormatter"]

call_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("call_id", default=None)
tenant_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("tenant", default=None)


@contextlib.contextmanager
def bind(call_id: str | None = None, tenant: str | None = None) -> Iterator[None]:
    """Tag records logged in this block (and tasks started in it); None keeps the outer value."""
    t_call = call_id_var.set(call_id) if call_id is not None else None
    t_tenant = tenant_var.set(tenant) if tenant is not None else None
    try:
        yield
    finally:
        if t_tenant is not None:
            tenant_var.reset(t_tenant)
        if t_call is not None:
            call_id_var.reset(t_call)


_base_factory = logging.getLogRecordFactory()


def _record_factory(*args, **kwargs) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)
    record.call_id = call_id_var.get()
    record.tenant = tenant_var.get()
    return record


def _install_factory() -> None:
    global _base_factory
    current = logging.getLogRecordFactory()
    if current is not _record_factory:
        _base_factory = current
        logging.setLogRecordFactory(_record_factory)


# attributes every LogRecord has; anything else came from ``extra=`` and is logged as a field
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "call_id", "tenant"}


def _timestamp(record: logging.LogRecord) -> str:
    return _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(timespec="milliseconds")


def _fields(record: logging.LogRecord) -> dict:
    out = {"ts": _timestamp(record), "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
    call_id = getattr(record, "call_id", None)
    if call_id is not None:
        out["call_id"] = call_id
    tenant = getattr(record, "tenant", None)
    if tenant is not None:
        out["tenant"] = tenant
    for key, value in record.__dict__.items():
        if key not in _STANDARD:
            out[key] = value
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, call_id, tenant, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out = _fields(record)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return _json.dumps(out, default=str, ensure_ascii=False)


class KeyValueFormatter(logging.Formatter):
    """``ts LEVEL logger msg key=value ...`` for humans at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        out = _fields(record)
        head = f"{out.pop('ts')} {out.pop('level'):<7} {out.pop('logger')} {out.pop('msg')}"
        tail = " ".join(f"{k}={_kv(v)}" for k, v in out.items())
        text = f"{head} {tail}" if tail else head
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _kv(value: object) -> str:
    s = str(value)
    return _json.dumps(s, ensure_ascii=False) if (not s or any(c in s for c in ' "=\n\t')) else s


_HANDLER_NAME = "hivepbx"


def setup_logging(level: int | str = "INFO", json: bool = True, stream: IO[str] | None = None) -> logging.Handler:
    """Route every logger through one root handler; calling again replaces it, not stacks it."""
    _install_factory()
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.get_name() == _HANDLER_NAME:
            root.removeHandler(h)
            h.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if json else KeyValueFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


_install_factory()
