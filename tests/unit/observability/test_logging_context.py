"""Structured logs carry call_id/tenant from contextvars, across asyncio tasks, without leaking."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from observability import logging as olog


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = olog.setup_logging("DEBUG", json=True, stream=stream)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def records(stream: io.StringIO) -> list[dict]:
    """Our test loggers' records (asyncio logs its selector choice through the same root)."""
    return [r for r in map(json.loads, stream.getvalue().splitlines()) if r["logger"].startswith("hivepbx.")]


def test_json_lines_carry_bound_context_only_inside_bind(out: io.StringIO) -> None:
    log = logging.getLogger("hivepbx.test")
    log.info("before")
    with olog.bind(call_id="c1@host", tenant="acme"):
        log.warning("inside %s", "bind", extra={"status": 486})
        with olog.bind(call_id="c2@host"):
            log.info("nested")
        log.info("back")
    log.info("after")
    r = records(out)
    assert [x["msg"] for x in r] == ["before", "inside bind", "nested", "back", "after"]
    assert "call_id" not in r[0] and "tenant" not in r[0]
    assert (r[1]["call_id"], r[1]["tenant"], r[1]["level"], r[1]["logger"], r[1]["status"]) == (
        "c1@host", "acme", "WARNING", "hivepbx.test", 486)
    assert (r[2]["call_id"], r[2]["tenant"]) == ("c2@host", "acme")  # None keeps the outer tenant
    assert r[3]["call_id"] == "c1@host"
    assert "call_id" not in r[4] and "tenant" not in r[4]
    assert r[0]["ts"].endswith("+00:00")


def test_exceptions_are_logged_as_a_field(out: io.StringIO) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("hivepbx.test").exception("failed")
    (r,) = records(out)
    assert r["msg"] == "failed" and "RuntimeError: boom" in r["exc"]


async def test_context_follows_tasks_and_never_crosses_between_them(out: io.StringIO) -> None:
    log = logging.getLogger("hivepbx.calls")
    gate = asyncio.Event()

    async def call(call_id: str, tenant: str) -> None:
        with olog.bind(call_id=call_id, tenant=tenant):
            log.info("start")
            await gate.wait()  # both calls are inside their bind() at once
            child = asyncio.create_task(asyncio.sleep(0, result=None))
            await child

            async def spawned() -> None:
                log.info("child")

            await asyncio.create_task(spawned())
            log.info("end")

    tasks = [asyncio.create_task(call("a@x", "t1")), asyncio.create_task(call("b@x", "t2"))]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*tasks)
    log.info("outside")
    r = records(out)
    by_call: dict[str | None, list[tuple[str, str | None]]] = {}
    for x in r:
        by_call.setdefault(x.get("call_id"), []).append((x["msg"], x.get("tenant")))
    assert by_call["a@x"] == [("start", "t1"), ("child", "t1"), ("end", "t1")]
    assert by_call["b@x"] == [("start", "t2"), ("child", "t2"), ("end", "t2")]
    assert by_call[None] == [("outside", None)]


async def test_bind_inside_a_task_does_not_leak_to_its_parent(out: io.StringIO) -> None:
    async def child() -> None:
        with olog.bind(call_id="inner"):
            await asyncio.sleep(0)
        olog.call_id_var.set("set-without-bind")  # even a bare set stays in the task's context

    with olog.bind(call_id="outer"):
        await asyncio.create_task(child())
        logging.getLogger("hivepbx.test").info("parent")
    assert records(out)[0]["call_id"] == "outer"


def test_every_handler_sees_the_fields(out: io.StringIO, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO), olog.bind(call_id="k1", tenant="t9"):
        logging.getLogger("hivepbx.other").info("hello")
    rec = next(r for r in caplog.records if r.getMessage() == "hello")
    assert (rec.call_id, rec.tenant) == ("k1", "t9")


def test_key_value_format_and_setup_replaces_its_handler() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    first = olog.setup_logging("INFO", json=True, stream=io.StringIO())
    handler = olog.setup_logging("INFO", json=False, stream=stream)
    try:
        assert first not in root.handlers and handler in root.handlers
        with olog.bind(call_id="x y", tenant="acme"):
            logging.getLogger("hivepbx.kv").info("ringing")
        logging.getLogger("hivepbx.kv").debug("hidden at INFO")
        line = stream.getvalue().strip()
        assert "\n" not in line
        assert " INFO    hivepbx.kv ringing " in line
        assert 'call_id="x y"' in line and "tenant=acme" in line
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
