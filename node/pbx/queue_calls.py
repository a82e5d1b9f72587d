"""Call queues as a destination: a caller dialling a queue's number (or a DID of type 'queue')
waits in the tenant's shared ACD queue (node/acd) and is put through to the agent the ACD
offers, an extension whose phones the node rings.

The queue runs as an application of node/pbx/app_call.py: the node answers the caller, who
hears ringback from the node's media endpoint while waiting (music and position announcements
can be played there later), and each Offer becomes a transfer attempt to the agent. The ACD
decides which agent and when, the same on every node; this module only acts on the decisions
about its own calls and reports back what the phones did (answered, declined, hung up).

Limits: one agent is rung at a time (a ring-all queue's further simultaneous offers are
declined at once, so those agents rest ``retry_delay``); an agent answering in the instant the
ACD times the offer out is still put through (the ACD counts the ring as missed and, as the
caller still waits, connects the call to that agent: node/acd/engine.py keeps a withdrawn
offer's agent *releasing* until this module reports what the phone did). A withdrawn offer,
and the caller hanging up while an agent rings, is reported (OfferDeclined) only once the
agent's leg is down: a CANCEL goes out only after the phone's first provisional response
(RFC 3261 §9.1), and until its final response the phone may still answer.

Document (feature object kind 'queue', named by its number): node.acd.config.QueueConfig,
e.g. {"members": ["1002", "1003"], "strategy": "longest-idle", "max_wait": 300,
"overflow": "1009"}. Agents log in through ``AcdService.login`` (feature codes: later), or
are logged in from the start with "static_members": true.
"""

from __future__ import annotations

import asyncio
import logging
import re

from node.acd.config import KIND, QueueConfig
from node.acd.events import CancelOffer, Offer, Overflow
from node.acd.service import AcdService
from node.config_rules import ConfigError
from node.pbx import destinations
from node.pbx import agent_codes  # noqa: F401  (agents' feature codes: log in/out, pause)
from node.pbx.app_call import AppContext, leg_up, register_app
from observability import tracing as otrace

__all__ = ["KIND", "put", "run"]

log = logging.getLogger("hivepbx.queue")

_NUMBER = re.compile(r"[0-9]{2,10}\Z")
_background: set[asyncio.Task] = set()
#: how long to wait for an agent's leg to end before reporting it anyway: an INVITE without
#: any response times out after 64*T1 (RFC 3261 Timer B); the ACD stops waiting after ring_timeout
_LEG_END_WAIT = 40.0
_LEG_POLL = 0.05


def _later(coro) -> None:
    """Publish without waiting (we may be being cancelled); keep the task referenced."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def put(config, tenant_id: int, number: str, doc: object) -> dict:
    """Validate and store a queue. Its number must not be another extension or feature."""
    if not isinstance(number, str) or not _NUMBER.match(number):
        raise ConfigError(f"queue number {number!r}: use 2 to 10 digits (callers dial it, DIDs point at it)")
    out = QueueConfig.from_dict(doc).to_dict()
    for member in out["members"]:
        if await config.get_extension(tenant_id, member) is None:
            raise ConfigError(f"queue member {member} is no extension of this tenant", 404)
    if out["overflow"] is not None:
        out["overflow"] = await destinations.check(config, tenant_id, out["overflow"], "queue overflow")
    taken = await destinations.internal_kind(config, tenant_id, number)
    if taken not in (None, KIND):
        raise ConfigError(f"{number} is {'an' if taken == 'extension' else 'a'} {taken.replace('_', ' ')} of this"
                          " tenant: pick another number for the queue", 409)
    await config.put_object(tenant_id, KIND, number, out)
    return out


def _cancel_transfer(ctx: AppContext) -> None:
    """Stop ringing the agent (the ACD withdrew the offer): ends the transfer as unanswered."""
    stop = getattr(ctx.call, "_on_xfer_timeout", None)
    if stop is not None:
        stop()


async def _legs_down(ctx: AppContext, legs: list | None = None) -> None:
    """Until ``legs`` (default: every leg this call rang) are down (final response, or hung up)."""
    deadline = asyncio.get_running_loop().time() + _LEG_END_WAIT
    while any(leg_up(leg) for leg in legs) if legs is not None else ctx.legs_up():
        if asyncio.get_running_loop().time() >= deadline:
            log.warning("call %s: an agent leg has no final response after %.0fs; reporting it ended",
                        ctx.call.id, _LEG_END_WAIT)
            return
        await asyncio.sleep(_LEG_POLL)


async def _caller_left(ctx: AppContext, acd: AcdService, tenant: int, call: str, agent: str) -> None:
    """The caller hung up while ``agent`` was rung: the ACD holds the agent until its leg is down."""
    legs = ctx.open_legs()  # one agent is rung at a time: these are its
    await acd.left(tenant, call, legs=True)
    await _legs_down(ctx, legs)
    await acd.declined(tenant, call, agent)


async def _declined_once_down(ctx: AppContext, acd: AcdService, tenant: int, call: str, agent: str,
                              legs: list) -> None:
    await _legs_down(ctx, legs)
    await acd.declined(tenant, call, agent)


async def run(ctx: AppContext, number: str, doc: dict) -> None:
    acd: AcdService | None = getattr(ctx.call.host, "acd", None)
    tenant = ctx.tenant.id
    if acd is None or not acd.ready:
        log.warning("queue %s of tenant %s: no ACD on this node, hanging up", number, ctx.tenant.name)
        return
    try:
        await acd.configure_queue(tenant, number, doc)  # the same document again is a no-op
    except ConfigError as e:
        log.warning("queue %s of tenant %s is invalid (%s): hanging up", number, ctx.tenant.name, e)
        return
    call = ctx.call.id
    span = otrace.tracer().start_span("queue.call", attributes={
        "hivepbx.tenant": ctx.tenant.name, "hivepbx.queue": number, "hivepbx.call_id": call}) \
        if otrace.enabled() else None
    qc = await acd.join(tenant, number, call)
    connected = overflowed = False
    ringing: str | None = None  # the agent of the offer being rung (its leg may be up)
    try:
        ctx.endpoint.tone("ringback")
        while True:
            d = await qc.next()
            if span is not None:
                span.add_event(type(d).__name__, {"agent": getattr(d, "agent", ""), "position": getattr(d, "position", 0)})
            if isinstance(d, Overflow):
                log.info("queue %s: call %s overflows (%s) to %s", number, call, d.reason, d.destination)
                overflowed = True  # the call has left the queue
                if d.destination:
                    await ctx.transfer(d.destination)
                return
            if not isinstance(d, Offer):
                continue  # Position (announcements come with the media helper), stale cancels
            ringing = d.agent
            connected = await _offer(ctx, acd, qc, d)
            ringing = None
            if connected:
                await asyncio.Event().wait()  # bridged: stay until the hang-up cancels us
            ctx.endpoint.tone("ringback")
    finally:
        if span is not None:
            span.set_attribute("hivepbx.queue_outcome", "connected" if connected else
                               "overflow" if overflowed else "left")
            span.end()
        if connected:
            _later(acd.ended(tenant, call))
        elif not overflowed and ringing is not None:
            _later(_caller_left(ctx, acd, tenant, call, ringing))
        elif not overflowed:
            _later(acd.left(tenant, call))


async def _offer(ctx: AppContext, acd: AcdService, qc, offer: Offer) -> bool:
    """Ring the offered agent until it answers, fails, or the ACD withdraws the offer."""
    tenant, call = offer.tenant, offer.call
    xfer = asyncio.get_running_loop().create_task(ctx.transfer(offer.agent))
    try:
        while not xfer.done():
            nxt = asyncio.ensure_future(qc.next())
            done, _ = await asyncio.wait({xfer, nxt}, return_when=asyncio.FIRST_COMPLETED)
            if nxt not in done:
                nxt.cancel()
                break
            d = nxt.result()
            if isinstance(d, CancelOffer) and d.agent == offer.agent:
                _cancel_transfer(ctx)  # ring timeout, caller gone, agent logged out, ...
            elif isinstance(d, Offer):
                await acd.declined(tenant, call, d.agent)  # one agent at a time (ring-all)
            elif isinstance(d, Overflow):
                _cancel_transfer(ctx)
                qc._put(d)  # handled by run() once the transfer is over
        result = await xfer
    except BaseException:
        xfer.cancel()
        raise
    if result.answered:
        await acd.answered(tenant, call, offer.agent)
        return True
    # a withdrawn offer's CANCEL may still wait for the phone's 180 (up to Timer B when the
    # phone never answers at all): the ACD holds this agent until then, but the caller goes on
    # to the next offer at once, so the wait for this leg runs beside it
    legs = ctx.open_legs()
    if legs:
        _later(_declined_once_down(ctx, acd, tenant, call, offer.agent, legs))
    else:
        await acd.declined(tenant, call, offer.agent)
    return False


register_app(KIND, run)
