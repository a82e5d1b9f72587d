"""Call park (kind ``park``): a phone transfers its call to a park lot and hangs up; any
phone of the tenant takes the call back by dialling the slot.

    hivepbx object put alpha park 700 '{"first": "701", "count": 9, "timeout": 60}'

* park: blind transfer (REFER) to the lot's number (``700``: the first free slot) or to a
  slot (``703``: that slot, 486 in the NOTIFY when taken). The transferor's NOTIFY says
  200 and it is released; the transferee stays in the call, its far side empty.
* retrieve: an extension of the same tenant dials the slot: its INVITE takes the empty
  side of the parked call (the parked party keeps its dialog and relay port; no
  re-INVITE). Dialling an empty slot is ``404``.
* timeout: after ``timeout`` seconds the parker's phones ring (From: the parked party);
  if nobody answers within the ring timeout, the parked call is hung up
  (hangup cause ``park-timeout``).
* while parked: the node's media engine (when it runs) plays the tenant's music on hold
  (node/pbx/hold.py: its upload, else the generated default tune) into the call, the
  ringback tone if no music can be had; without a media engine the parked party hears
  silence.

A call the node answered itself (an IVR caller bridged to a receptionist,
node/pbx/app_call.py) parks the same way through ``park_app_call`` / ``AppParked``, whichever
party parks the other: the parked party's own media endpoint plays the music, a retriever
is answered by a new endpoint.

Slots live in this node's memory (a parked call is a live dialog on this node anyway).
CDRs: the pair before parking ends with ``parked``; the parked period is its own CDR
(callee = the slot) ending with ``retrieved-by-<ext>`` / ``park-timeout``; the retriever
gets the next CDR.
"""

from __future__ import annotations

import logging
from node.config_rules import ConfigError
from node.pbx import outgoing
from node.pbx.call import Caller, CallState
from node.pbx.routing import RoutePlan, extension_targets
from node.ports import ConfigStore
from node.sip.errors import SipError
from node.sip.ids import new_tag
from node.sip.message import make_response

log = logging.getLogger("hivepbx.park")

KIND = "park"
MAX_SLOTS = 100
DEFAULT_TIMEOUT = 60


def validate(name: object, doc: object) -> dict:
    if not isinstance(name, str) or not name.isdigit() or not 2 <= len(name) <= 10:
        raise ConfigError(f"a park lot is named by the number a phone transfers to (2-10 digits), not {name!r}")
    if not isinstance(doc, dict) or set(doc) - {"first", "count", "timeout"} or "first" not in doc:
        raise ConfigError('a park lot is {"first": "701", "count": 9, "timeout": 60}')
    first = doc["first"]
    if not isinstance(first, str) or not first.isdigit() or not 2 <= len(first) <= 10:
        raise ConfigError(f"park lot {name}: first slot must be a number of 2-10 digits, not {first!r}")
    count = doc.get("count", 10)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_SLOTS:
        raise ConfigError(f"park lot {name}: count must be 1-{MAX_SLOTS}")
    if len(str(int(first) + count - 1)) > len(first):
        raise ConfigError(f"park lot {name}: slots {first}.. would change length")
    timeout = doc.get("timeout", DEFAULT_TIMEOUT)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 2 <= timeout <= 3600:
        raise ConfigError(f"park lot {name}: timeout must be 2-3600 seconds")
    if name in slots({"first": first, "count": count}):
        raise ConfigError(f"park lot {name}: the lot number must not be one of its slots")
    return {"first": first, "count": count, "timeout": timeout}


def slots(doc: dict) -> list[str]:
    first = doc["first"]
    return [str(int(first) + i).zfill(len(first)) for i in range(doc["count"])]


async def save(config: ConfigStore, tenant_id: int, name: str, doc: object) -> dict:
    out = validate(name, doc)
    mine = set(slots(out)) | {name}
    for number in sorted(mine):
        if await config.get_extension(tenant_id, number) is not None:
            raise ConfigError(f"park lot {name}: {number} is an extension of this tenant", 409)
    for other, odoc in (await config.list_objects(tenant_id, KIND)).items():
        if other == name:
            continue
        try:
            theirs = set(slots(validate(other, odoc))) | {other}
        except ConfigError:
            continue
        if mine & theirs:
            raise ConfigError(f"park lot {name} overlaps park lot {other}", 409)
    await config.put_object(tenant_id, KIND, name, out)
    return out


async def find(config: ConfigStore, tenant_id: int, number: str) -> tuple[str, dict, str | None] | None:
    """(lot, lot document, slot or None for the lot number itself) that ``number`` names."""
    if not number.isdigit():
        return None
    for name, doc in (await config.list_objects(tenant_id, KIND)).items():
        try:
            doc = validate(name, doc)
        except ConfigError:
            continue
        if number == name:
            return name, doc, None
        if number in slots(doc):
            return name, doc, number
    return None


class Parking:
    """Parked calls of this node, per (tenant id, slot)."""

    def __init__(self) -> None:
        self.slots: dict[tuple[int, str], "Parked"] = {}


def parking(host) -> Parking:
    p = getattr(host, "parking", None)
    if p is None:
        p = host.parking = Parking()
    return p


class Parked:
    """A call whose ``side`` is empty, waiting in ``slot``; stands in ``call.transfer`` so
    BYEs and the call's end reach it."""

    def __init__(self, call, side: str, slot: str, parker: Caller, timeout: float) -> None:
        self.call = call
        self.side = side  # the empty one
        self.other = "b" if side == "a" else "a"
        self.slot = slot
        self.parker = parker
        self.timer = call.host.loop.call_later(timeout, self._on_timeout)
        self.media_ep = None
        self.recall: outgoing.Outgoing | None = None
        #: the parked party was on hold when parked: re-INVITE it when it is taken back
        self.held = False

    @property
    def key(self) -> tuple[int, str]:
        return (self.call.tenant.id, self.slot)

    def leave(self) -> None:
        """Out of the slot (retrieved, hung up, recalled)."""
        self.timer.cancel()
        if parking(self.call.host).slots.get(self.key) is self:
            del parking(self.call.host).slots[self.key]
            outgoing.PARKED.dec()
        if self.media_ep is not None:
            self.media_ep.close()
            self.media_ep = None
        if self.call.transfer is self:
            self.call.transfer = None

    # -- call.transfer interface
    def on_bye(self, side: str, req) -> bool:
        call = self.call
        call.host.endpoint.send_response(make_response(req, 200, None))
        self.leave()
        call.hangup_cause = "caller-bye" if side == call.caller_side else "callee-bye"
        if self.recall is not None:
            self.recall.abort()
        call.end()
        return True

    def abort(self) -> None:
        if self.recall is not None:
            self.recall.abort()
        self.leave()

    # -- retrieve: the retriever's INVITE takes the empty side
    async def take(self, req, txn, flow, ext) -> None:
        call = self.call
        ep = call.host.endpoint
        try:
            to_retriever = outgoing.relay_answer(call, self.side, req.body, outgoing.side_sdp(call, self.other),
                                                 ep.local_host(flow))
        except SipError as e:
            ep.send_response(make_response(req, 488, None, to_tag=new_tag()))
            log.info("retrieve failed: %s", e)
            return
        self.leave()
        retriever = Caller(ext.number, ext.display_name, call.tenant.domain, ext)
        outgoing.accept_on_side(call, self.side, req, flow, to_retriever)
        outgoing.new_pair(call, outgoing.party_of(call, self.other),
                          RoutePlan(call.tenant, "internal", ext.number, callee_ext=ext),
                          f"retrieved-by-{retriever.number}", None, self.side)
        if self.held:
            outgoing.resume(call, self.other)
        log.info("slot %s retrieved by %s", self.slot, ext.number)
        outgoing.feature_done("park", "retrieved")

    # -- music on hold
    async def start_media(self) -> None:
        host = self.call.host
        apps = host.apps
        if apps is None or self.call.media is None:
            return  # silence
        call = self.call
        try:
            ep = await apps.engine.open_endpoint(call.invite.call_id, call.tenant.name)
        except Exception as e:
            log.info("no media engine endpoint for the parked call: %s", e)
            return
        if self.call.transfer is not self:
            ep.close()  # retrieved or gone while the port was opened
            return
        self.media_ep = ep
        try:
            relay_ip = call.media.advertise or host.endpoint.local_host(call.a_flow)
            ans = ep.answer(outgoing.side_sdp(call, self.other), relay_ip)
            call.media.rewrite(self.side, ans, relay_ip)
            ep.set_remote(relay_ip, call.media.session.leg(self.side).local_port)
        except SipError as e:
            log.info("parked call media: %s", e)
            return
        moh = _music(host, call.tenant.id)
        if moh is not None:
            ep.listen(moh)
        else:
            ep.tone("ringback")

    # -- timeout: ring the parker
    def _on_timeout(self) -> None:
        call = self.call
        if call.state is not CallState.ANSWERED or call.transfer is not self:
            return
        _timed_out(self)

    async def _recall(self) -> None:
        call = self.call
        host = call.host
        plan = await _recall_plan(call, self.parker)
        if call.state is not CallState.ANSWERED or call.transfer is not self:
            return
        if not plan.attempts:
            plan.fail_status, plan.fail_reason = 480, "Temporarily Unavailable"
        relay_ip = call.media.advertise or host.endpoint.local_host(call.a_flow)
        offer = call.media.rewrite(self.other, outgoing.side_sdp(call, self.other), relay_ip)
        self.recall = outgoing.Outgoing(call, plan, offer, outgoing.party_of(call, self.other),
                                        self._recalled, self._recall_failed)
        self.recall.start()

    def _recalled(self, leg, resp) -> None:
        call = self.call
        if resp.body:
            call.media.rewrite(self.side, resp.body, call.host.endpoint.local_host(call.a_flow))
        self.leave()
        outgoing.put_on_side(call, self.side, leg, resp.body)
        outgoing.new_pair(call, outgoing.party_of(call, self.other), self.recall.plan, "park-timeout",
                          leg.target, self.side)
        if self.held:
            outgoing.resume(call, self.other)

    def _recall_failed(self, status: int, reason: str) -> None:
        call = self.call
        self.leave()
        if call.state is CallState.ANSWERED:
            call.hangup_cause = "park-timeout"
            outgoing.release_side(call, self.other)
            call.end()


async def _recall_plan(call, parker: Caller) -> RoutePlan:
    """The parker's phones (its extension's registrations) to ring when the park times
    out; no attempts when it has none."""
    ext = parker.extension
    plan = RoutePlan(call.tenant, "internal", parker.number, callee_ext=ext)
    if ext is not None:
        targets = await extension_targets(call.tenant, ext, call.tenant.domain, call.host.locations)
        if targets:
            plan.attempts.append(targets)
    return plan


def _music(host, tenant_id: int):
    """The tenant's music on hold (node/pbx/hold.py: its upload, else the generated default
    tune); None when there is none to be had (then the ringback tone plays)."""
    try:
        from node.pbx import hold

        return hold.moh_source(host.apps.engine, host.cfg.data_dir, tenant_id)
    except Exception as e:
        log.warning("no music on hold for the parked call: %s", e)
        return None


async def park_by_transfer(xfer, number: str) -> bool:
    """A blind transfer to ``number``: when it names a park lot or slot of the tenant, park
    the transferee there (True); False for anything else."""
    call = xfer.call
    host = call.host
    found = await find(host.config, call.tenant.id, number)
    if found is None:
        return False
    lot, doc, slot = found
    if xfer.aborted or call.state is not CallState.ANSWERED:
        return True
    lots = parking(host).slots
    slot = _free_slot(xfer, lots, lot, doc, slot)
    if slot is None:
        return True
    parker = outgoing.party_of(call, xfer.side)
    parked_party = outgoing.party_of(call, xfer.other)
    held = outgoing.take_hold(call) == xfer.other  # our music replaces the holder's
    p = Parked(call, xfer.side, slot, parker, doc["timeout"])
    p.held = held
    lots[p.key] = p
    outgoing.PARKED.inc()
    outgoing.feature_done("park", "done")
    xfer.notify(200, "OK", final=True)
    outgoing.release_side(call, xfer.side, send_bye=not xfer.transferor_gone, grace=True)
    call.media.session.leg(xfer.side).set_remote("0.0.0.0", 0)
    call.transfer = p
    plan = RoutePlan(call.tenant, "internal", slot)
    outgoing.new_pair(call, parked_party, plan, "parked", None, xfer.side)
    log.info("call of %s parked in slot %s by %s", parked_party.number, slot, parker.number)
    await p.start_media()
    return True


def _timed_out(p) -> None:
    """A parked call (plain or application) whose time is up leaves its slot; the parker is rung."""
    host = p.call.host
    if parking(host).slots.get(p.key) is p:
        del parking(host).slots[p.key]
        outgoing.PARKED.dec()
    outgoing.feature_done("park", "timeout")
    host._spawn(p._recall())


def _free_slot(xfer, lots: dict, lot: str, doc: dict, slot: str | None) -> str | None:
    """The slot the transfer parks in; None (the transfer failed 486) when there is none."""
    tenant_id = xfer.call.tenant.id
    if slot is None:
        slot = next((s for s in slots(doc) if (tenant_id, s) not in lots), None)
        if slot is None:
            xfer.failed(486, f"Busy Here (park lot {lot} is full)")
    elif (tenant_id, slot) in lots:
        xfer.failed(486, f"Busy Here (park slot {slot} is taken)")
        return None
    return slot


async def park_app_call(xfer, found: tuple[str, dict, str | None]) -> None:
    """A blind REFER of either party of a bridged application call (node/pbx/app_call.py
    ``AppRefer``) to a park lot or slot: the transferor is released and its endpoint closed;
    the parked party keeps its own endpoint, which plays the tenant's music on hold, and
    waits on side a (``AppCall.vacate``: the caller parking the party it was put through to
    moves that party there). Retrieval answers the retriever from a new endpoint bridged to
    the parked party's."""
    call = xfer.call
    lot, doc, slot = found
    if xfer.aborted or call.state is not CallState.ANSWERED:
        return
    lots = parking(call.host).slots
    slot = _free_slot(xfer, lots, lot, doc, slot)
    if slot is None:
        return
    ext = xfer.ext  # the transferor's extension (checked by the REFER): the one to recall
    parker = Caller(ext.number, ext.display_name, call.tenant.domain, ext)
    parked_party = call._party(xfer.other)
    p = AppParked(call, slot, parker, doc["timeout"])
    lots[p.key] = p
    call._parked = p
    outgoing.PARKED.inc()
    outgoing.feature_done("park", "done")
    xfer.notify(200, "OK", final=True)
    if call._refer is xfer:
        call._refer = None
    if getattr(call, "recorder", None) is not None:
        from node.pbx import recording

        recording.on_call_ended(call)  # the recording of the pair ends with it
    outgoing.release_side(call, xfer.side, send_bye=not xfer.transferor_gone, grace=True)
    call.vacate(xfer.side)
    call.held_by = None  # our music replaces the holder's
    assert call.ep is not None
    call.ep.unbridge()
    call._play_music(call.ep)
    outgoing.new_pair(call, parked_party, RoutePlan(call.tenant, "internal", slot), "parked", None, "b")
    if call.span is not None:
        call.span.add_event("park", {"hivepbx.park_slot": slot, "hivepbx.parker": parker.number})
    log.info("application call of %s parked in slot %s by %s", parked_party.number, slot, parker.number)


class AppParked:
    """The slot of a parked application call (its side b empty, the parked party on side a
    hearing music from its own endpoint); ``call._parked`` while it waits or its parker is
    rung."""

    def __init__(self, call, slot: str, parker: Caller, timeout: float) -> None:
        self.call = call
        self.slot = slot
        self.parker = parker
        self.timer = call.host.loop.call_later(timeout, self._on_timeout)

    @property
    def key(self) -> tuple[int, str]:
        return (self.call.tenant.id, self.slot)

    def leave(self) -> None:
        """Out of the slot (retrieved, hung up, recalled); the call's end calls it too."""
        self.timer.cancel()
        slots_ = parking(self.call.host).slots
        if slots_.get(self.key) is self:
            del slots_[self.key]
            outgoing.PARKED.dec()
        if self.call._parked is self:
            self.call._parked = None

    async def take(self, req, txn, flow, ext) -> None:
        """The retriever's INVITE is answered by a new endpoint bridged to the caller's."""
        call = self.call
        host = call.host
        try:
            ep = await call.apps.engine.open_endpoint(call.invite.call_id, call.tenant.name)
        except SipError as e:
            log.warning("no media endpoint for retrieving a parked call: %s", e.reason)
            host.endpoint.send_response(make_response(req, 503, None, to_tag=new_tag(), headers=[("Retry-After", "5")]))
            return
        if parking(host).slots.get(self.key) is not self or call.state is not CallState.ANSWERED:
            ep.close()  # retrieved, recalled or hung up while the port was opened
            host.endpoint.send_response(make_response(req, 404, f"Not Found (nothing parked in slot {self.slot})",
                                                      to_tag=new_tag()))
            return
        if getattr(txn, "tu", None) == "cancelled":
            ep.close()
            host.endpoint.send_response(make_response(req, 487, None, to_tag=new_tag()))
            return
        try:
            answer = ep.answer(req.body, call._sdp_ip(flow))
        except SipError as e:
            ep.close()
            host.endpoint.send_response(make_response(req, 488, None, to_tag=new_tag()))
            log.info("retrieve failed: %s", e)
            return
        self.leave()
        outgoing.accept_on_side(call, "b", req, flow, answer)
        call.b_ep = ep
        call.ep.bridge(ep)
        outgoing.new_pair(call, call._party("a"), RoutePlan(call.tenant, "internal", ext.number, callee_ext=ext),
                          f"retrieved-by-{ext.number}", None, "b")
        from node.pbx import recording

        recording.on_app_bridged(call)
        log.info("slot %s retrieved by %s", self.slot, ext.number)
        outgoing.feature_done("park", "retrieved")

    # -- timeout: ring the parker from a new endpoint (the call's own transfer machinery)
    def _on_timeout(self) -> None:
        call = self.call
        if call.state is not CallState.ANSWERED or call._parked is not self:
            return
        _timed_out(self)

    async def _recall(self) -> None:
        call = self.call
        plan = await _recall_plan(call, self.parker)
        status = 480
        if plan.attempts and call.state is CallState.ANSWERED and call._parked is self:
            try:
                call.b_ep = await call.apps.engine.open_endpoint(call.invite.call_id, call.tenant.name)
            except SipError as e:
                log.warning("no media endpoint for the park recall: %s", e.reason)
            else:
                if call.state is not CallState.ANSWERED or call._parked is not self:
                    return  # end() closed the endpoint
                status = await call._ring(plan)
        if call.state is not CallState.ANSWERED or call._parked is not self:
            return
        self.leave()
        if status == 200 and call.answered_leg is not None:
            outgoing.new_pair(call, call._party("a"), plan, "park-timeout", call.answered_leg.target, "b")
            return
        if call.b_ep is not None:
            call.b_ep.close()
            call.b_ep = None
        call.hangup_cause = "park-timeout"
        call.hangup_both("park-timeout")


async def try_retrieve(host, req, txn, flow, tenant, ext, dialled: str) -> bool:
    """Extension ``ext`` dials ``dialled``: when it is a park slot, take the call parked
    there (True, also when the slot is empty: 404)."""
    found = await find(host.config, tenant.id, dialled)
    if found is None:
        return False
    lot, _, slot = found
    ep = host.endpoint
    if slot is None:
        ep.send_response(make_response(req, 404, f"Not Found (park lot {lot}: transfer a call here, dial a slot to retrieve)",
                                       to_tag=new_tag()))
        return True
    p = parking(host).slots.get((tenant.id, slot))
    if p is None or p.call.state is not CallState.ANSWERED:
        ep.send_response(make_response(req, 404, f"Not Found (nothing parked in slot {slot})", to_tag=new_tag()))
        return True
    if getattr(txn, "tu", None) == "cancelled":
        ep.send_response(make_response(req, 487, None, to_tag=new_tag()))
        return True
    if not req.body or req.content_type != "application/sdp":
        ep.send_response(make_response(req, 488, "Not Acceptable Here (retrieving needs an SDP offer)", to_tag=new_tag()))
        return True
    await p.take(req, txn, flow, ext)
    return True
