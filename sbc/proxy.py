"""The SBC's request pipeline: a transaction-stateful, topology-hiding proxy.

It is the transaction user of one ``TransactionLayer`` (node/sip/transaction.py): each
request from one side gets a server transaction (which absorbs retransmissions and sends
the INVITE's 100 Trying) and a client transaction towards the other side; responses come
back through the pair. A BYE takes neither (``_stateless_request``): its sender's
retransmissions cross end to end, and the SBC keeps only the way back for its answers.
No dialog state is kept: every in-dialog request finds its way by
the token in its Request-URI (see sbc/topology.py), so an SBC restart with the same
secret loses only the transactions in flight.

Sides: *outside* (phones, carriers) and *inside* (the nodes). A request from outside is
  1. judged by the Guard (before anything else, in ``message_received``),
  2. routed: an in-dialog request by its node token, anything else to the tenant's node
     chosen by the Dispatcher among live nodes,
  3. forwarded with the SBC's Via only and its Contact replaced by a flow token,
  4. retried on the next candidate node (same datacenter first) when the node answers
     503 or nothing at all within ``node_timeout`` before any provisional response; the
     node is then marked down until the OPTIONS probes see it again.
A request from inside goes to the phone's flow named by the token in its Request-URI.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from node.sip.cancel import build_cancel
from node.sip.errors import LocalProtocolError, RemoteProtocolError, SipError
from node.sip.flow import Flow
from node.sip.headers import Via
from node.sip.ids import MAGIC_COOKIE, new_branch, new_call_id, new_tag
from node.sip.message import Message, Request, Response, make_response
from node.sip.transaction import (
    ClientTransaction,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    TransactionState,
    _edited_via,
)
from node.sip.uri import NameAddr, Uri, split_header_list
from observability import logging as olog
from observability import tracing as otrace
from sbc import metrics as M
from sbc import topology as T
from sbc.config import NodeTarget, SbcConfig
from sbc.dispatch import Dispatcher
from sbc.health import Health
from sbc.overload import NEW_WORK, LoadMeter
from sbc.protection.verdict import ACCEPT as _ACCEPT
from sbc.stateless import Forwarded, StatelessTable
from sbc.workers import branch_owner, conn_owner

log = logging.getLogger("hivepbx.sbc")
# observability.logging's context: set directly on the per-message path (cheaper than bind())
_CALL_ID = olog.call_id_var
_TENANT = olog.tenant_var

OUTSIDE = "outside"
INSIDE = "inside"
_WILDCARDS = ("0.0.0.0", "::", "")
#: methods that may start a dialog or a registration and so may move to another node
#: how long a Call-ID sticks to its node (a challenge is answered within seconds; a
#: registration refresh that comes later to another node costs one more 401, nothing else),
#: and how many are remembered at most
AFFINITY_TTL = 32.0
AFFINITY_MAX = 200_000
CONTACT_CACHE = 16_384
TENANT_CACHE = 16_384
_RETRYABLE = frozenset(("INVITE", "REGISTER", "OPTIONS", "SUBSCRIBE", "MESSAGE", "PUBLISH"))
#: the branch prefix of requests forwarded without transactions (see _stateless_request)
STATELESS_BRANCH = MAGIC_COOKIE + "sl"
_BRANCH_OF = re.compile(r"[^,]*?;\s*branch=([^;,\s]+)", re.IGNORECASE)


class Forward:
    """One proxied transaction: the server side, the current client side, the candidates."""

    __slots__ = (
        "request", "source", "inbound", "tenant", "candidates", "node", "client", "client_id", "out_uri",
        "provisional", "any_response", "cancelled", "cancel_sent", "final", "target_flow", "span", "vias",
    )

    def __init__(self, server: ServerTransaction, request: Request, source: Flow, inbound: bool, tenant: str) -> None:
        # the server transaction is not kept (it holds us as its tu), and the client one only
        # until the final answer: no reference cycle outlives the call set-up, so reference
        # counting frees a finished transaction pair at once instead of the cyclic GC, whose
        # full collections over a loaded SBC's heap stalled it for up to a second
        self.request = request
        self.source = source
        self.inbound = inbound
        self.tenant = tenant
        self.candidates: list[NodeTarget] = []
        self.node: NodeTarget | None = None
        #: the current client transaction until the final answer; its id for good
        self.client: ClientTransaction | None = None
        self.client_id: tuple | None = None
        self.out_uri = request.uri_text
        self.provisional = False  # a provisional > 100 came: the node owns the call now
        self.any_response = False
        self.cancelled = False
        self.cancel_sent = False
        self.final = 0
        self.target_flow: Flow | None = None
        #: OpenTelemetry span of an initial request from outside (only when tracing is on)
        self.span = None
        #: the request's Via headers, for its responses (collected at the first one)
        self.vias: list[tuple[str, str]] | None = None


class Abandoned:
    """A client transaction given up for another node; a late answer is wound down."""

    __slots__ = ("node_id",)

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id


class Probe:
    __slots__ = ("node_id", "done")

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.done = False


_CANCEL = object()  # tu of our CANCEL and BYE client transactions: their answers need nothing


@dataclass(frozen=True, slots=True)
class SideAddresses:
    """The bound sockets of one side (transport → (host, port)) and the address to advertise."""

    bound: dict[str, tuple[str, int]]
    advertise: str | None = None


class _AcceptAll:
    def check_request(self, msg, source):
        return None


class Proxy:
    def __init__(
        self,
        cfg: SbcConfig,
        endpoint,
        dispatcher: Dispatcher,
        health: Health,
        sealer: T.Sealer,
        outside: SideAddresses,
        inside: SideAddresses,
        *,
        guard=None,
        media=None,
        call_later: Callable | None = None,
    ) -> None:
        self.cfg = cfg
        self.endpoint = endpoint
        self.dispatcher = dispatcher
        self.health = health
        self.sealer = sealer
        self.outside = outside
        self.inside = inside
        self.separate_inside = bool(cfg.internal_listens)
        self._inside_locals = {(v[0], v[1]) for v in inside.bound.values()} if self.separate_inside else set()
        self.guard = guard or _AcceptAll()
        self.media = media
        self._call_later = call_later or asyncio.get_event_loop().call_later
        self._tasks: set[asyncio.Task] = set()
        #: UDP flows of phones with a live registration → expiry (for CRLF keep-alives)
        self.registered_flows: dict[Flow, float] = {}
        self._node_addr: dict[tuple[str, int], NodeTarget] = {}
        #: (rewriter number, Contact value) → rewritten value: see _memo
        self._contact_cache: dict[tuple, str] = {}
        self._rewriter_ids = 0
        #: (side, peer...) → its memoised Contact rewriter (made once, not per message)
        self._rewriters: dict[tuple, Callable[[str], str]] = {}
        #: (transport, inside) → the address we advertise there, when it is not a wildcard's
        self._addresses: dict[tuple[str, bool], tuple[str, int]] = {}
        #: Call-ID → (node id, until): see _sticky
        self._affinity: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._node_host: dict[str, NodeTarget | None] = {}
        #: (From name-addr, Request-URI, To name-addr) texts → tenant: see tenant_of
        self._tenants: dict[tuple[str, str, str], str] = {}
        #: Request-URI text → whether it dials a long (external) number: see _admitted
        self._long_numbers: dict[str, bool] = {}
        #: several workers on one port (sbc/workers.py): this one's index, their number, the
        #: relay to a sibling, and the tag our branches end with
        self.worker = 0
        self.workers = 1
        self._relay: Callable | None = None
        self._branch_tag = ""
        #: event-loop lag → load shedding (fed by the runtime; never sheds unless fed)
        self.load = LoadMeter(cfg.max_loop_lag)
        #: messages received (the load meter prices the socket backlog per message)
        self.received = 0
        self._in_event = False
        #: BYEs forwarded without transactions: where their answers go (see _stateless_request)
        self.stateless = StatelessTable()
        #: (deadline, Forward, client transaction) of requests a node has not answered yet
        self._silent: deque[tuple[float, Forward, ClientTransaction]] = deque()
        self._sweep_timer = None
        self.refresh_nodes()

    def set_worker(self, index: int, count: int, relay: Callable) -> None:
        self.worker, self.workers, self._relay = index, count, relay
        self._branch_tag = f".w{index}" if count > 1 else ""

    def refresh_nodes(self) -> None:
        self._node_addr = {n.address: n for n in self.dispatcher.nodes}
        #: node address → the UDP flow to it (a frozen value: made once, not per message)
        self._udp_flows: dict[tuple[str, int], Flow] = {}
        hosts: dict[str, NodeTarget | None] = {}
        for n in self.dispatcher.nodes:
            hosts[n.host] = None if n.host in hosts else n  # ambiguous when shared
        self._node_host = hosts

    # ------------------------------------------------------------------ entry points
    def message_received(self, item, flow: Flow) -> None:
        """The transports' callback: the Guard sees what comes from outside before anything."""
        self.received += 1
        inside = self.is_inside(flow)
        if not inside:
            try:
                if isinstance(item, Message):
                    verdict = self.guard.check_request(item, flow)
                    if verdict is not _ACCEPT and verdict is not None and getattr(verdict, "action", "accept") != "accept":
                        self._blocked(item, flow, verdict)
                        return
                else:
                    unparseable = getattr(self.guard, "unparseable", None)
                    verdict = unparseable(flow) if unparseable is not None else None
                    if verdict is not None and getattr(verdict, "action", "accept") != "accept":
                        return  # a source the Guard blocks gets not even a 400
            except Exception:
                # a fault in the protection layer must not take signalling down with it
                log.exception("the Guard failed on a message from %s:%s; accepted", *flow.remote[:2])
            if (self.load.fraction and type(item) is Request and item.method in NEW_WORK and not self._shed_ok(item)
                    and self.load.refuse()):
                self._shed(item, flow)
                return
        if self.workers > 1 and isinstance(item, Message):
            owner = self._owner(item, flow)
            if owner is not None and owner != self.worker and owner < self.workers:
                self._relay(owner, item, flow)  # type: ignore[misc]
                M.RELAYED.inc()
                return
        self._deliver(item, flow, inside)

    def _deliver(self, item, flow: Flow, inside: bool | None = None) -> None:
        """A BYE and the answers to the ones we forwarded take the stateless way; the rest
        goes to the transaction layer. ``inside``: ``is_inside(flow)`` when the caller knows it."""
        t = type(item)
        try:
            if t is Response:
                h = item.headers
                via = h[0][1] if h and h[0][0] == "Via" else item.get("Via")  # ours is the only one
                if via is not None and STATELESS_BRANCH in via and self._stateless_response(item, via):
                    return
                if item.status == 100 and self._trying(item):
                    return
            elif t is Request:
                method = item.method
                if method == "BYE":
                    if self._stateless_request(item, flow, inside):
                        return
                elif method == "ACK" and self._ack_direct(item, flow, inside):
                    return
        except Exception:
            # as the endpoint does for a failing transaction user: logged, the message dropped
            log.exception("the SBC failed on a %s from %s:%s", getattr(item, "method", "response"), *flow.remote[:2])
            return
        self.endpoint.message_received(item, flow)

    def _trying(self, resp: Response) -> bool:
        """A 100 for one of our forwards is hop by hop (our server transaction sent its own):
        it only stops the client transaction's retransmissions and is counted, as
        ``_on_response`` does, without the layer's event, the endpoint's flush and its timer
        re-arm (one such answer a call). False: the usual way (another TU, a CANCELled
        forward whose CANCEL waits for it, anything the layer does not take)."""
        layer = self.endpoint.layer
        try:
            txn = layer.find_client(resp)
        except SipError:
            return False  # the endpoint's path judges it malformed
        if txn is None:
            return False
        tu = txn.tu
        if type(tu) is not Forward or (tu.client_id == txn.id and tu.cancelled):
            return False
        took = layer.absorb_trying(txn, resp)
        if took is None:
            return False
        if took:
            M.response(100, OUTSIDE if tu.inbound else INSIDE)
            if tu.client_id == txn.id:
                tu.any_response = True
        return True

    def _ack_direct(self, req: Request, flow: Flow, inside: bool | None = None) -> bool:
        """An ACK no INVITE server transaction of ours waits for (the ACK of a 2xx: the
        dialog's, RFC 6026 §7.1) goes straight to ``_ack``, past the transaction layer's
        event queue, which would hand it to us anyway; False: the layer's (the ACK of a
        non-2xx final, or one it must judge malformed)."""
        try:
            if self.endpoint.layer.find_invite_server(req) is not None:
                return False
        except SipError:
            return False
        if inside is None:
            inside = self.is_inside(flow)
        M.request("ACK", INSIDE if inside else OUTSIDE)
        # the media anchor's task logs with the call's id (as on_event sets it)
        t_call = _CALL_ID.set(_call_id(req)) if self.media is not None else None
        try:
            self._ack(req, flow, inside)
        except LocalProtocolError as e:
            log.warning("cannot forward ACK: %s", e)
        except SipError:
            pass  # an ACK is never answered (as in _on_request)
        finally:
            if t_call is not None:
                _CALL_ID.reset(t_call)
        return True

    def _shed_ok(self, req: Request) -> bool:
        """In-dialog requests (a To tag, or our node token) are never shed: calls must end."""
        try:
            if req.to.tag or T.token_of(req.uri_text, T.NODE_PARAM) is not None:
                return True
            # a retransmission of an INVITE we took: its transaction answers it, not a 503
            return req.method == "INVITE" and self.endpoint.layer.find_invite_server(req) is not None
        except SipError:
            return True

    def _shed(self, req: Request, flow: Flow) -> None:
        M.SHED.labels("loop_lag").inc()
        if req.method == "OPTIONS":
            return  # a keep-alive or a monitor: silence is answer enough under overload
        try:
            resp = make_response(req, 503, None, to_tag=new_tag(),
                                 headers=[("Retry-After", str(self.cfg.shed_retry_after))])
            self.endpoint.send_stateless(resp, flow)
        except (SipError, LocalProtocolError):
            pass

    def relayed_in(self, item, flow: Flow) -> None:
        """A message a sibling worker received for us (already judged by its Guard)."""
        self._deliver(item, flow)

    def _owner(self, msg: Message, flow: Flow) -> int | None:
        """The worker a message belongs to when it is not whoever received it: a response
        to one of its branches, a request towards a phone on one of its connections."""
        if type(msg) is Response:
            try:
                return branch_owner(msg.vias[0].branch)
            except SipError:
                return None
        token = T.token_of(msg.uri_text, T.FLOW_PARAM)  # type: ignore[attr-defined]
        if token is None:
            return None
        target = T.read_phone_token(self.sealer, token)
        if target is None or not target.flow.conn_id:
            return None  # UDP: every worker sends from the shared socket
        return conn_owner(target.flow.conn_id)

    def _blocked(self, msg: Message, flow: Flow, verdict) -> None:
        if verdict.action != "reject" or not isinstance(msg, Request) or msg.method == "ACK":
            return  # drop: say nothing
        try:
            resp = make_response(msg, verdict.status or 403, verdict.reason or None, to_tag=new_tag(),
                                 headers=list(getattr(verdict, "headers", ()) or ()))
            self.endpoint.send_stateless(resp, flow)
        except (SipError, LocalProtocolError):
            pass

    def on_event(self, ev) -> None:
        # called only from the endpoint's event loop, which flushes what we send once the
        # events are drained: the forwarding sends below leave the flush to it (_in_event)
        self._in_event = True
        try:
            if type(ev) is RequestReceived:
                req = ev.request
                token = _CALL_ID.set(_call_id(req))  # every log line of this request names the call
                try:
                    self._on_request(req, ev.flow, ev.transaction)
                finally:
                    _CALL_ID.reset(token)
            elif type(ev) is ResponseReceived:
                if ev.transaction is not None:
                    self._on_response(ev.response, ev.transaction)
            else:
                self._on_timeout(ev.transaction)
        finally:
            self._in_event = False

    # the endpoint's send_* without their flush while an event is handled (see on_event)
    def _send_txn_request(self, msg: Request, flow: Flow) -> ClientTransaction:
        ep = self.endpoint
        if self._in_event:
            return ep.layer.send_request(msg, flow, ep.now())
        return ep.send_request(msg, flow)

    def _send_txn_response(self, msg: Response) -> None:
        ep = self.endpoint
        if self._in_event:
            ep.layer.send_response(msg, ep.now())
        else:
            ep.send_response(msg)

    def _send_stateless(self, msg: Message, flow: Flow) -> None:
        if self._in_event:
            self.endpoint.layer.send_stateless(msg, flow)
            return
        # straight to the socket: the endpoint's flush would also re-arm its timer, and a
        # message sent outside any transaction arms none (the layer's queue is empty here:
        # every event and timer handled flushed it)
        data = msg.to_bytes()
        transports = self.endpoint.transports
        if transports is None:
            return
        try:
            transports.send(data, flow)
        except OSError as e:
            log.info("send to %s failed: %s", flow.remote, e)

    # ------------------------------------------------------------------ sides
    def is_inside(self, flow: Flow) -> bool:
        if self.separate_inside:
            if flow.local in self._inside_locals:
                return True
            # our own TCP connections to nodes have an ephemeral local port
            return flow.transport == "tcp" and flow.remote in self._node_addr and flow.local not in self._outside_locals()
        return flow.remote in self._node_addr or (
            flow.transport == "tcp" and self._node_host.get(flow.remote[0]) is not None
        )

    def _outside_locals(self) -> set[tuple[str, int]]:
        return set(self.outside.bound.values())

    def node_of(self, flow: Flow) -> NodeTarget | None:
        n = self._node_addr.get(flow.remote)
        return n if n is not None else self._node_host.get(flow.remote[0])

    def _side(self, inside: bool) -> SideAddresses:
        return self.inside if inside else self.outside

    def _address(self, transport: str, inside: bool, flow: Flow) -> tuple[str, int]:
        hit = self._addresses.get((transport, inside))
        if hit is not None:
            return hit
        side = self._side(inside)
        bound = side.bound.get(transport) or side.bound.get("udp") or next(iter(side.bound.values()))
        host = bound[0]
        if host in _WILDCARDS:
            # depends on the peer (the kernel's source address towards it): not memoised
            return side.advertise or self.endpoint.local_host(flow), bound[1]
        if side.advertise:
            host = side.advertise
        out = self._addresses[(transport, inside)] = (host, bound[1])
        return out

    def _via(self, flow: Flow, inside: bool, branch: str | None = None) -> str:
        host, port = self._address(flow.transport, inside, flow)
        hp = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return f"SIP/2.0/{flow.transport.upper()} {hp};branch={branch or new_branch() + self._branch_tag};rport"

    def _via_pair(self, flow: Flow, inside: bool, branch: str | None = None) -> tuple[str, Via | None]:
        """Our Via for a forwarded request, as text and as the object the transaction layer
        would otherwise parse back out of it (IPv4 hosts; None lets the layer parse)."""
        host, port = self._address(flow.transport, inside, flow)
        if branch is None:
            branch = new_branch() + self._branch_tag
        transport = flow.transport.upper()
        if ":" in host:
            return f"SIP/2.0/{transport} [{host}]:{port};branch={branch};rport", None
        return (f"SIP/2.0/{transport} {host}:{port};branch={branch};rport",
                Via(transport, host, port, {"branch": branch, "rport": None}))

    def node_flow(self, node: NodeTarget) -> Flow:
        if node.transport == "udp":
            hit = self._udp_flows.get(node.address)
            if hit is not None:
                return hit
            local = self._side(True).bound.get("udp")
            if local is not None:
                flow = self._udp_flows[node.address] = Flow("udp", node.address, local)
                return flow
        return self.endpoint.transports.flow_to(node.transport, node.host, node.port)

    # ------------------------------------------------------------------ requests
    def _on_request(self, req: Request, flow: Flow, txn: ServerTransaction | None) -> None:
        inside = self.is_inside(flow)
        method = req.method
        M.request(method, INSIDE if inside else OUTSIDE)
        try:
            if method == "ACK":
                self._ack(req, flow, inside)
                return
            if method == "CANCEL":
                self._cancel(req)
                return
            mf = req.max_forwards
            if mf is not None and mf <= 0:
                self._reply(req, 483)
                return
            if inside:
                self._from_inside(req, flow, txn)
            else:
                self._from_outside(req, flow, txn)
        except LocalProtocolError as e:
            log.warning("cannot forward %s: %s", method, e)
            if method != "ACK":
                self._reply(req, 500)
        except SipError as e:
            if method != "ACK":
                self._reply(req, e.status_hint if 400 <= e.status_hint < 700 else 400, _clean(e.reason))

    def _reply(self, req: Request, status: int, reason: str | None = None, headers=None) -> None:
        self.endpoint.send_response(make_response(req, status, reason, to_tag=new_tag(), headers=headers))

    def tenant_of(self, req: Request, flow: Flow) -> str:
        c = self._carrier_of(flow)
        if c is not None:
            return c.tenant
        if req.method == "REGISTER":
            return req.to.uri.host_bare
        # memoised on the text of the three URIs: a phone repeats its From and the dialled
        # Request-URI call after call, and only their hosts matter (parsing From costs more
        # than the rest of the lookup); the name-addr up to its '>' holds the whole URI
        f = req.get("From") or ""
        t = req.get("To") or ""
        fe = f.rfind(">")
        te = t.rfind(">")
        if fe < 0 or te < 0:
            return self._tenant_by_uris(req)
        key = (f[: fe + 1], req.uri_text, t[: te + 1])
        cache = self._tenants
        hit = cache.get(key)
        if hit is None:
            hit = self._tenant_by_uris(req)
            if len(cache) >= TENANT_CACHE:
                cache.clear()
            cache[key] = hit
        return hit

    @staticmethod
    def _tenant_by_uris(req: Request) -> str:
        """The first SIP URI host that is a domain (From, Request-URI, To), else the
        Request-URI's host: a tenant is its SIP domain."""
        for uri in (req.from_.uri, req.uri, req.to.uri):
            if uri.is_sip and not _is_ip(uri.host_bare):
                return uri.host_bare
        return req.uri.host_bare if req.uri.is_sip else ""

    def _from_outside(self, req: Request, flow: Flow, txn: ServerTransaction) -> None:
        method = req.method
        token = T.token_of(req.uri_text, T.NODE_PARAM)
        if token is None and method == "OPTIONS" and req.uri.user is None and not req.to.tag:
            # a keep-alive or a probe of the SBC itself: answered here, the nodes never see it
            self._reply(req, 200, None, [("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, UPDATE, PRACK, INFO, REFER, NOTIFY")])
            return
        tenant = self.tenant_of(req, flow)
        fwd = Forward(txn, req, flow, True, tenant)
        txn.tu = fwd
        t_tenant = _TENANT.set(tenant or None)  # every log line of this request names the tenant
        try:
            if token is not None:
                target = T.read_node_token(self.sealer, token)
                if target is None:
                    M.unroutable("bad_token")
                    self._reply(req, 404, "Not Found")
                    return
                node = self.dispatcher.node(target.node_id) or self._node_by_contact(target.uri)
                fwd.out_uri = target.uri
                if node is None:
                    # the node left the configuration: its dialogs go with it
                    M.unroutable("unknown_node")
                    self._reply(req, 481)
                    return
                fwd.candidates = [node]
            else:
                if method == "INVITE" and not req.to.tag and not self._admitted(fwd):
                    return
                fwd.candidates = self.dispatcher.candidates(tenant, self.health.is_up, self._sticky(req.call_id))
                if otrace.enabled():
                    fwd.span = otrace.tracer("hivepbx.sbc").start_span(
                        f"sbc.{method.lower()}", attributes={"sip.call_id": req.call_id, "hivepbx.tenant": tenant})
                if not fwd.candidates:
                    M.unroutable("no_node")
                    self._reply(req, 503, None, [("Retry-After", "10")])
                    return
            self._try_next(fwd)
        finally:
            _TENANT.reset(t_tenant)

    def _admitted(self, fwd: Forward) -> bool:
        """The Guard's per-tenant call admission (IP/GeoIP filter, call limits), if it has one."""
        admit = getattr(self.guard, "admit_call", None)
        if admit is None:
            return True
        carrier = self._carrier_of(fwd.source) is not None
        # the SBC cannot know the node's routing: a long dialled number counts as leaving the
        # platform, an extension-length one as internal (carriers' calls always come from it)
        external = carrier or self._long_number(fwd.request)
        verdict = admit(fwd.tenant, fwd.request.call_id, fwd.source, outbound=not carrier, external=external)
        if verdict is None or getattr(verdict, "action", "accept") == "accept":
            return True
        # a drop is answered too: an INVITE server transaction without a final would live forever
        self._reply(fwd.request, getattr(verdict, "status", 0) or 403, getattr(verdict, "reason", "") or None,
                    list(getattr(verdict, "headers", ()) or ()))
        return False

    def _long_number(self, req: Request) -> bool:
        """Seven digits or more in the Request-URI's user part; memoised on the URI text
        (a dialled number repeats, and the answer needs the URI parsed)."""
        text = req.uri_text
        hit = self._long_numbers.get(text)
        if hit is None:
            hit = _digits(req.uri.user_unescaped or "") >= 7
            if len(self._long_numbers) >= TENANT_CACHE:
                self._long_numbers.clear()
            self._long_numbers[text] = hit
        return hit

    def _node_by_contact(self, uri_text: str) -> NodeTarget | None:
        """The configured node a sealed Contact points at (when the sender was not known by id)."""
        try:
            u = Uri.parse(uri_text)
        except SipError:
            return None
        return self._node_addr.get((u.host_bare, u.port or 5060)) if u.is_sip else None

    def _carrier_of(self, flow: Flow):
        host = flow.remote[0]
        for c in self.cfg.carriers:
            if c.host == host and (c.port is None or c.port == flow.remote[1]):
                return c
        return None

    def _sticky(self, call_id: str) -> str | None:
        """The node a Call-ID went to last, while remembered: the credentials after a 401/407
        and a registration's refreshes must reach the node that issued the nonce, whatever
        the distribution mode (round robin would move them)."""
        hit = self._affinity.get(call_id)
        if hit is None:
            return None
        if hit[1] < self._now():
            del self._affinity[call_id]
            return None
        return hit[0]

    def _remember(self, call_id: str, node: NodeTarget) -> None:
        aff = self._affinity
        now = self._now()
        aff[call_id] = (node.id, now + AFFINITY_TTL)
        aff.move_to_end(call_id)
        # oldest first (one TTL for all): drop what expired, and the oldest beyond the cap
        while aff:
            head = next(iter(aff.values()))
            if head[1] >= now and len(aff) <= AFFINITY_MAX:
                break
            aff.popitem(last=False)

    def _try_next(self, fwd: Forward) -> None:
        node = fwd.candidates.pop(0)
        fwd.node = node
        if fwd.inbound and not fwd.request.to.tag:
            self._remember(fwd.request.call_id, node)
        fwd.provisional = fwd.any_response = False
        flow = self.node_flow(node)
        src = fwd.source
        via, via_view = self._via_pair(flow, True)
        out = T.forward_request(
            fwd.request, fwd.out_uri, via,
            contact=self._phone_contact_rewriter(src, flow),
            extra=[(T.SOURCE_HEADER, f"{src.transport}:{_hp(src.remote)}")], via_view=via_view,
        )
        M.forwarded(node.id, out.method)
        log.debug("%s → node %s", out.method, node.id)
        self._send_request(fwd, out, flow)

    def _send_request(self, fwd: Forward, out: Request, flow: Flow) -> None:
        if self.media is None or not _media_work(out):
            self._send_client(fwd, out, flow)  # no closures on the common path
            return
        self._media(out, fwd.tenant, None, lambda msg: self._send_client(fwd, msg, flow),
                    lambda status: self._final_here(fwd, status))

    def _send_client(self, fwd: Forward, msg: Request, flow: Flow) -> None:
        client = self._send_txn_request(msg, flow)
        client.tu = fwd
        fwd.client = client
        fwd.client_id = client.id
        fwd.target_flow = flow
        if fwd.inbound and fwd.node is not None and not msg.to.tag:
            # one loop timer for all of them (node_timeout is one value: the queue is in
            # deadline order), not a TimerHandle armed and fired per request
            self._silent.append((self._now() + self.cfg.node_timeout, fwd, client))
            if self._sweep_timer is None:
                self._sweep_timer = self._call_later(self.cfg.node_timeout, self._sweep_silent)

    def _sweep_silent(self) -> None:
        """Run ``_no_answer`` for every request sent ``node_timeout`` ago or more."""
        q = self._silent
        now = self._now() + 0.001  # a timer may fire a clock tick early
        self._sweep_timer = True  # the failovers below queue their requests without arming
        try:
            while q and q[0][0] <= now:
                _, fwd, client = q.popleft()
                if fwd.client_id != client.id or fwd.any_response or fwd.final:
                    continue  # answered or moved on: the common case, nothing to do
                # the log lines of a failover name the call and the tenant, as the
                # request's own do (a loop timer would have carried its context here)
                t_call = _CALL_ID.set(_call_id(fwd.request))
                t_tenant = _TENANT.set(fwd.tenant or None)
                try:
                    self._no_answer(fwd, client)
                except Exception:
                    log.exception("failover after a silent node failed")
                finally:
                    _TENANT.reset(t_tenant)
                    _CALL_ID.reset(t_call)
        finally:
            self._sweep_timer = None
            if q:
                self._sweep_timer = self._call_later(max(0.0, q[0][0] - self._now()), self._sweep_silent)

    def _no_answer(self, fwd: Forward, client: ClientTransaction) -> None:
        """``node_timeout`` after sending: a node that said nothing at all is taken as down."""
        if fwd.client_id != client.id or client.last_response is not None or fwd.final or fwd.any_response:
            return
        if client.state is TransactionState.TERMINATED:
            return
        node = fwd.node
        assert node is not None
        if fwd.request.method == "INVITE":
            # a live node's transaction layer answers 100 Trying at once: silence means dead
            self.health.failed(node.id, self._now())
        else:
            # a slow registrar is not a dead node: one strike, the probes decide the rest
            self.health.suspect(node.id, self._now())
        if fwd.cancelled:
            client.tu = Abandoned(node.id)
            self._final_here(fwd, 487)
            return
        if fwd.candidates and fwd.request.method in _RETRYABLE and not fwd.request.to.tag:
            log.warning("node %s did not answer %s within %.1fs: trying node %s",
                        node.id, fwd.request.method, self.cfg.node_timeout, fwd.candidates[0].id)
            M.failover("timeout")
            client.tu = Abandoned(node.id)
            self._try_next(fwd)

    def _final_here(self, fwd: Forward, status: int) -> None:
        """The SBC itself ends the transaction (no node answered, media unavailable, cancelled)."""
        if fwd.final:
            return
        fwd.final = status
        fwd.client = None
        self._span_end(fwd, status)
        headers = [("Retry-After", "5")] if status == 503 else None
        self.endpoint.send_response(make_response(fwd.request, status, None, to_tag=new_tag(), headers=headers))
        self._ended(fwd)
        if self.media is not None and fwd.request.method == "INVITE":
            self._spawn(self.media.delete(fwd.request.call_id))

    def _from_inside(self, req: Request, flow: Flow, txn: ServerTransaction) -> None:
        token = T.token_of(req.uri_text, T.FLOW_PARAM)
        fwd = Forward(txn, req, flow, False, "")
        txn.tu = fwd
        fwd.node = self.node_of(flow)
        if token is not None:
            target = T.read_phone_token(self.sealer, token)
            if target is None:
                M.unroutable("bad_token")
                self._reply(req, 404, "Not Found")
                return
            fwd.out_uri = target.uri
            out_flow = target.flow
        else:
            out_flow = self._carrier_flow(req)
            if out_flow is None:
                M.unroutable("no_target")
                self._reply(req, 404, "Not Found (no SBC flow token in Request-URI)")
                return
        node_id = fwd.node.id if fwd.node else "?"
        via, via_view = self._via_pair(out_flow, False)
        out = T.forward_request(req, fwd.out_uri, via, contact=self._node_contact_rewriter(node_id, out_flow),
                                via_view=via_view)
        self._send_request(fwd, out, out_flow)

    def _carrier_flow(self, req: Request) -> Flow | None:
        """A node's request to a configured carrier address goes out through the SBC."""
        u = req.uri
        if not u.is_sip:
            return None
        host, port = u.host_bare, u.port or 5060
        for c in self.cfg.carriers:
            if c.host == host and (c.port is None or c.port == port):
                transport = u.transport or "udp"
                if transport == "udp":
                    local = self.outside.bound.get("udp")
                    if local is not None:
                        return Flow("udp", (host, port), local)
                return self.endpoint.transports.flow_to(transport, host, port)
        return None

    # --- BYE without transactions
    def _stateless_request(self, req: Request, flow: Flow, inside: bool | None = None) -> bool:
        """Forward an in-dialog BYE with no server or client transaction (RFC 3261 §16.11):
        its sender retransmits it end to end and the receiver's transaction absorbs the
        copies, so the SBC keeps only the way back (sbc/stateless.py). Topology hiding is the
        stateful path's: our Via only, tokens resolved, internal headers stripped. False
        (nothing done) leaves the request to the transaction layer: anything unusual (no
        token, a bad one, a legacy branch, Max-Forwards spent) gets the stateful path's
        answers, and so does a BYE that arrives over a reliable transport for a node or phone
        reached over UDP, which nobody would retransmit."""
        if inside is None:
            inside = self.is_inside(flow)
        try:
            # no To-tag check: the token routes it as the stateful path would (a node answers
            # 481 to a BYE outside any dialog)
            mf = req.max_forwards
            if mf is not None and mf <= 0:
                return False
            via = req.top_via
            in_branch = via.branch
            if not in_branch or not in_branch.startswith(MAGIC_COOKIE):
                return False
            if inside:
                target = T.read_phone_token(self.sealer, T.token_of(req.uri_text, T.FLOW_PARAM) or "")
                if target is None:
                    return False
                uri, out_flow = target.uri, target.flow
                node = self.node_of(flow)
                node_id, tenant = (node.id if node else "?"), ""
            else:
                nc = T.read_node_token(self.sealer, T.token_of(req.uri_text, T.NODE_PARAM) or "")
                node = (self.dispatcher.node(nc.node_id) or self._node_by_contact(nc.uri)) if nc else None
                if nc is None or node is None:
                    return False
                uri, out_flow = nc.uri, self.node_flow(node)
                # the tenant only matters to the media anchor (nothing is logged on this path)
                node_id, tenant = node.id, (self.tenant_of(req, flow) if self.media is not None else "")
            if flow.reliable and not out_flow.reliable:
                return False
            call_id = req.call_id
            key = (in_branch, flow.transport, flow.remote)
            table = self.stateless
            branch = table.branch_for(key)
            if branch is None:
                branch = STATELESS_BRANCH + os.urandom(10).hex() + self._branch_tag
                table.add(key, branch, Forwarded(_answer_vias(req, via, flow), flow, out_flow, call_id, not inside,
                                                 node_id, tenant), self._now())
        except SipError:
            return False
        M.request("BYE", INSIDE if inside else OUTSIDE)
        # sent outside any transaction: nothing reads a parsed view of our Via, and a BYE
        # seldom has a Contact, so its rewriter is only looked up for one
        via_text = self._via(out_flow, not inside, branch)
        if inside:
            out = T.forward_request(req, uri, via_text,
                                    contact=lambda v: self._node_contact_rewriter(node_id, out_flow)(v),
                                    views=self.media is not None)
        else:
            out = T.forward_request(
                req, uri, via_text, contact=lambda v: self._phone_contact_rewriter(flow, out_flow)(v),
                extra=[(T.SOURCE_HEADER, f"{flow.transport}:{_hp(flow.remote)}")], views=self.media is not None,
            )
            M.forwarded(node_id, "BYE")
        if self.media is None or not _media_work(out):
            self._send_stateless(out, out_flow)
            return True
        t_call = _CALL_ID.set(call_id)
        try:
            self._media(out, tenant or None, None, lambda msg: self._send_stateless(msg, out_flow), None)
        finally:
            _CALL_ID.reset(t_call)
        return True

    def _stateless_response(self, resp: Response, via_text: str) -> bool:
        """An answer to a BYE we forwarded statelessly (``via_text``: its top Via header)
        goes back with the Vias its request came with; False for anything else (the
        transaction layer's)."""
        m = _BRANCH_OF.match(via_text)
        entry = self.stateless.get(m.group(1)) if m is not None else None
        if entry is None:
            return False
        try:
            if resp.cseq.method != "BYE":
                return False
        except SipError:
            return False
        status = resp.status
        M.response(status, OUTSIDE if entry.inbound else INSIDE)
        if status == 100:
            return True  # hop by hop
        # an answer to a BYE seldom has a Contact: its rewriter is only looked up for one
        if entry.inbound:
            rewrite = lambda v: self._node_contact_rewriter(entry.node_id, entry.source)(v)  # noqa: E731
        else:
            rewrite = lambda v: self._phone_contact_rewriter(entry.target, entry.source)(v)  # noqa: E731
        out = T.forward_response(resp, entry.vias, contact=rewrite, views=self.media is not None)
        source = entry.source
        if self.media is None or not _media_work(out):
            self._send_stateless(out, source)
        else:
            self._media(out, entry.tenant or None, False, lambda msg: self._send_stateless(msg, source), None)
        if status >= 200 and not entry.answered:
            entry.answered = status
            if status < 300:
                ended = getattr(self.guard, "dialog_ended", None)
                if ended is not None:
                    ended(entry.call_id)  # as _ended does for a BYE's 2xx
        return True

    # --- ACK of a 2xx, CANCEL
    def _ack(self, req: Request, flow: Flow, inside: bool) -> None:
        if inside:
            target = T.read_phone_token(self.sealer, T.token_of(req.uri_text, T.FLOW_PARAM) or "")
            if target is None:
                return
            uri, out_flow = target.uri, target.flow
        else:
            nc = T.read_node_token(self.sealer, T.token_of(req.uri_text, T.NODE_PARAM) or "")
            node = (self.dispatcher.node(nc.node_id) or self._node_by_contact(nc.uri)) if nc else None
            if nc is None or node is None:
                return
            uri, out_flow = nc.uri, self.node_flow(node)
        # sent statelessly: only the media anchor would read its parsed views, our Via's none
        out = T.forward_request(req, uri, self._via(out_flow, not inside), views=self.media is not None)
        if self.media is None or not _media_work(out):
            self._send_stateless(out, out_flow)
            return
        self._media(out, None, None, lambda msg: self.endpoint.send_stateless(msg, out_flow), None)

    def _cancel(self, req: Request) -> None:
        inv = self.endpoint.layer.find_invite_server(req)
        fwd = inv.tu if inv is not None else None
        if not isinstance(fwd, Forward):
            self._reply(req, 481)
            return
        self.endpoint.send_response(make_response(req, 200))
        fwd.cancelled = True
        if fwd.final:
            return
        if fwd.client is None:
            self._final_here(fwd, 487)
        elif fwd.any_response:
            self._send_cancel(fwd)

    def _send_cancel(self, fwd: Forward) -> None:
        if fwd.cancel_sent or fwd.client is None:
            return
        fwd.cancel_sent = True
        self._cancel_client(fwd.client)

    def _cancel_client(self, client: ClientTransaction) -> None:
        # the INVITE as forwarded: same branch, Route set, Request-URI (RFC 3261 §9.1)
        c = self.endpoint.send_request(build_cancel(client.request), client.flow)
        c.tu = _CANCEL

    # ------------------------------------------------------------------ responses
    def _on_response(self, resp: Response, txn: ClientTransaction) -> None:
        tu = txn.tu
        if type(tu) is Forward:
            if resp.status == 100 and (tu.client_id != txn.id or not tu.cancelled):
                # hop by hop, and nothing to log or forward: the short way (one a call)
                M.response(100, OUTSIDE if tu.inbound else INSIDE)
                if tu.client_id == txn.id:
                    tu.any_response = True
                return
            t_call = _CALL_ID.set(_call_id(resp))
            t_tenant = _TENANT.set(tu.tenant or None)
            try:
                self._forward_response(tu, resp, txn)
            finally:
                _TENANT.reset(t_tenant)
                _CALL_ID.reset(t_call)
        elif type(tu) is Probe:
            self._probe_answered(tu, resp)
        elif type(tu) is Abandoned:
            self._wind_down(txn, resp)

    def _forward_response(self, fwd: Forward, resp: Response, txn: ClientTransaction) -> None:
        status = resp.status
        M.response(status, OUTSIDE if fwd.inbound else INSIDE)
        if fwd.client_id != txn.id:
            return
        fwd.any_response = True
        if status < 200 and fwd.cancelled:
            self._send_cancel(fwd)
        if status == 100:
            return  # hop by hop: our server transaction sent its own
        req = fwd.request
        if (
            (status == 503 or status == 408) and fwd.inbound and fwd.candidates and not fwd.provisional
            and not fwd.cancelled and req.method in _RETRYABLE and not req.to.tag
        ):
            # serial forking: nothing of the request has happened yet, another node may serve it
            node = fwd.node
            assert node is not None
            if status == 503:
                # overloaded or draining: no new work there until it says so (or the probes)
                self.health.failed(node.id, self._now(), _retry_after(resp))
            log.warning("node %s answered %s with %d: trying node %s", node.id, req.method, status,
                        fwd.candidates[0].id)
            M.failover(str(status))
            self._try_next(fwd)
            return
        if status < 200:
            fwd.provisional = True
        elif not fwd.final:
            fwd.final = status
            fwd.client = None  # nothing is CANCELled any more: break the cycle (see Forward)
            self._span_end(fwd, status)
        if fwd.inbound:
            rewrite = self._register_contact_restorer() if req.method == "REGISTER" else \
                self._node_contact_rewriter(fwd.node.id if fwd.node else "?", fwd.source)
        else:
            rewrite = self._phone_contact_rewriter(fwd.target_flow or txn.flow, fwd.source)
        vias = fwd.vias
        if vias is None:
            vias = fwd.vias = T.via_headers(req)
        # the server transaction finds itself by the Via and CSeq text: without media nothing
        # reads the parsed views of what is sent
        out = T.forward_response(resp, vias, contact=rewrite, views=self.media is not None)
        if self.media is None or not _media_work(out):
            self._send_txn_response(out)
        else:
            initial = req.method == "INVITE" and not req.to.tag
            self._media(out, fwd.tenant or None, initial, self.endpoint.send_response, None)
        if status >= 200:
            self._finished(fwd, req, resp)

    def _finished(self, fwd: Forward, req: Request, resp: Response) -> None:
        status = resp.status
        if fwd.inbound and req.method in ("INVITE", "REGISTER"):
            observe = getattr(self.guard, "observe_response", None)
            if observe is not None:
                observe(req, resp, fwd.source)
        if req.method == "REGISTER" and fwd.inbound and 200 <= status < 300 and fwd.source.transport == "udp":
            self._note_registration(fwd.source, resp)
        if (req.method == "INVITE" and status >= 300 and not req.to.tag) or (req.method == "BYE" and status < 300):
            self._ended(fwd)

    def _span_end(self, fwd: Forward, status: int) -> None:
        span = fwd.span
        if span is not None:
            fwd.span = None
            span.set_attribute("sip.status_code", status)
            if fwd.node is not None:
                span.set_attribute("hivepbx.node", fwd.node.id)
            span.end()

    def _ended(self, fwd: Forward) -> None:
        req = fwd.request
        if fwd.inbound or req.method == "BYE":  # a node's BYE ends an admitted call too (same Call-ID)
            ended = getattr(self.guard, "dialog_ended", None)
            if ended is not None:
                ended(req.call_id)

    def _wind_down(self, txn: ClientTransaction, resp: Response) -> None:
        """A node answered a request we had moved elsewhere: end what it started."""
        if txn.request.method != "INVITE":
            return
        if 100 <= resp.status < 200:
            if txn.state is TransactionState.PROCEEDING:
                self._cancel_client(txn)
        elif 200 <= resp.status < 300:
            self._ack_and_bye(txn, resp)

    def _ack_and_bye(self, txn: ClientTransaction, resp: Response) -> None:
        r = txn.request
        try:
            contact = resp.contacts[0].uri if resp.contacts else r.uri
        except SipError:
            contact = r.uri
        base = [
            ("Max-Forwards", "70"),
            ("From", r.get("From") or ""),
            ("To", resp.get("To") or ""),
            ("Call-ID", r.get("Call-ID") or ""),
        ]
        ack = Request("ACK", str(contact), [("Via", self._via(txn.flow, True))] + base + [("CSeq", f"{r.cseq.seq} ACK")])
        self.endpoint.send_stateless(ack, txn.flow)
        bye = Request("BYE", str(contact), [("Via", self._via(txn.flow, True))] + base + [("CSeq", f"{r.cseq.seq + 1} BYE")])
        self.endpoint.send_request(bye, txn.flow).tu = _CANCEL

    def _on_timeout(self, txn) -> None:
        tu = txn.tu
        if type(tu) is Probe:
            self._probe_failed(tu)
            return
        if type(tu) is not Forward or not isinstance(txn, ClientTransaction):
            return
        fwd = tu
        if fwd.client_id != txn.id or fwd.final:
            return
        req = fwd.request
        if fwd.inbound and fwd.node is not None and not fwd.any_response:
            self.health.failed(fwd.node.id, self._now())
            if fwd.candidates and not fwd.cancelled and req.method in _RETRYABLE and not req.to.tag:
                M.failover("timeout")
                self._try_next(fwd)
                return
        self._final_here(fwd, 487 if fwd.cancelled else 408)

    # ------------------------------------------------------------------ Contact rewriting
    def _phone_contact_rewriter(self, phone_flow: Flow, node_flow: Flow):
        """Outside Contact → an SBC-internal URI carrying the phone's flow."""
        host, port = self._address(node_flow.transport, True, node_flow)
        # the flow's fields, not the Flow: its dataclass __hash__ is a Python call
        key = ("p", phone_flow.transport, phone_flow.remote, phone_flow.local, phone_flow.conn_id,
               node_flow.transport, host, port)
        run = self._rewriters.get(key)
        if run is not None:
            return run

        def rewrite(na: NameAddr) -> NameAddr:
            uri = na.uri
            if not uri.is_sip:
                return na
            token = T.phone_token(self.sealer, phone_flow, str(uri))
            masked = T.masquerade_uri(uri, host, port, node_flow.transport, T.FLOW_PARAM, token)
            return NameAddr(masked, na.display, na.params)

        return self._memo(key, rewrite)

    def _memo(self, key: tuple, rewrite):
        """A Contact rewriter memoised on (side, peer, value): a phone or a node repeats the
        same Contact call after call, and the tokens are deterministic, so the parse, the
        crypto and the formatting are done once per distinct value. The values are cached
        under a number of their own per rewriter, not under ``key`` (hashing a key with a Flow
        in it calls the dataclass's Python ``__hash__``)."""
        cache = self._contact_cache
        rid = self._rewriter_ids = self._rewriter_ids + 1

        def run(value: str) -> str:
            k = (rid, value)
            out = cache.get(k)
            if out is None:
                out = T.rewrite_contacts(value, rewrite)
                if len(cache) >= CONTACT_CACHE:
                    cache.clear()
                cache[k] = out
            return out

        rewriters = self._rewriters
        if len(rewriters) >= CONTACT_CACHE:
            rewriters.clear()
        rewriters[key] = run
        return run

    def _node_contact_rewriter(self, node_id: str, outside_flow: Flow):
        """Node Contact → an SBC-external URI carrying the sealed node Contact."""
        host, port = self._address(outside_flow.transport, False, outside_flow)
        key = ("n", node_id, outside_flow.transport, host, port)
        run = self._rewriters.get(key)
        if run is not None:
            return run

        def rewrite(na: NameAddr) -> NameAddr:
            uri = na.uri
            if not uri.is_sip:
                return na
            token = T.node_token(self.sealer, node_id, str(uri))
            return NameAddr(T.masquerade_uri(uri, host, port, outside_flow.transport, T.NODE_PARAM, token), na.display, na.params)

        return self._memo(key, rewrite)

    def _register_contact_restorer(self):
        """The registrar's 200 lists the bindings as the node knows them: give the phone its own
        Contacts back; bindings that did not come through this SBC are not shown at all."""
        def restore(na: NameAddr) -> NameAddr | None:
            token = T.token_of(str(na.uri), T.FLOW_PARAM)
            target = T.read_phone_token(self.sealer, token) if token else None
            if target is None:
                return None
            try:
                return NameAddr(Uri.parse(target.uri), na.display, na.params)
            except RemoteProtocolError:
                return None

        return lambda value: T.rewrite_contacts(value, restore)

    # ------------------------------------------------------------------ keep-alives
    def _note_registration(self, flow: Flow, resp: Response) -> None:
        try:
            expires = [int(c.params.get("expires") or 0) for c in resp.contacts]
        except (SipError, ValueError):
            return
        now = self._now()
        if expires and max(expires) > 0:
            self.registered_flows[flow] = now + max(expires)
        else:
            self.registered_flows.pop(flow, None)

    def send_keepalives(self) -> int:
        """CRLF to every phone registered over UDP (RFC 5626 §3.5.1's ping): keeps its NAT
        binding open, so the node's calls reach it through the SBC."""
        now = self._now()
        transports = self.endpoint.transports
        sent = 0
        for flow, until in list(self.registered_flows.items()):
            if until <= now:
                del self.registered_flows[flow]
                continue
            try:
                transports.send(b"\r\n\r\n", flow)
                sent += 1
            except OSError:
                pass
        return sent

    # ------------------------------------------------------------------ node probes
    def probe_due(self) -> None:
        now = self._now()
        for node_id in self.health.due(now):
            node = self.dispatcher.node(node_id)
            if node is None:
                continue
            self.health.probe_sent(node_id, now)
            self._send_probe(node)

    def _send_probe(self, node: NodeTarget) -> None:
        flow = self.node_flow(node)
        host, _ = self._address(flow.transport, True, flow)
        target = f"sip:{_hp(node.address)}" + (f";transport={node.transport}" if node.transport != "udp" else "")
        req = Request("OPTIONS", target, [
            ("Via", self._via(flow, True)),
            ("Max-Forwards", "70"),
            ("From", f"<sip:sbc@{host if ':' not in host else '[' + host + ']'}>;tag={new_tag()}"),
            ("To", f"<{target}>"),
            ("Call-ID", new_call_id()),
            ("CSeq", "1 OPTIONS"),
        ])
        probe = Probe(node.id)
        try:
            txn = self.endpoint.send_request(req, flow)
        except (OSError, LocalProtocolError):
            self._probe_failed(probe)
            return
        txn.tu = probe
        self._call_later(self.cfg.probe_timeout, self._probe_failed, probe)

    def _probe_answered(self, probe: Probe, resp: Response) -> None:
        if probe.done or resp.status < 200:
            return
        probe.done = True
        ok = resp.status != 503
        M.probe(ok)
        self.health.probe_result(probe.node_id, ok, self._now())

    def _probe_failed(self, probe: Probe) -> None:
        if probe.done:
            return
        probe.done = True
        M.probe(False)
        self.health.probe_result(probe.node_id, False, self._now())

    # ------------------------------------------------------------------ media seam
    def _media(self, msg: Message, tenant: str | None, initial: bool | None, then: Callable, fail) -> None:
        """Let the media anchor (sbc.media, when configured) rewrite the SDP, then ``then(msg)``.

        Only messages it has work for take the detour through a task: SDP bodies, BYE and
        CANCEL (media deleted) and failed INVITEs. A relay that cannot be reached fails a
        request with its status (503) rather than letting SDP bypass the relay."""
        media = self.media
        if media is None or not _media_work(msg):
            then(msg)
            return
        self._spawn(self._anchored(media, msg, tenant, initial, then, fail))

    async def _anchored(self, media, msg: Message, tenant: str | None, initial: bool | None, then: Callable,
                        fail) -> None:
        # a coroutine of its own, not a closure in _media: the common path then allocates no cells
        try:
            await media.rewrite(msg, tenant=tenant, initial=initial)
        except Exception as e:
            if fail is not None and isinstance(msg, Request) and msg.body:
                log.warning("media anchoring failed, %s refused: %s", msg.method, e)
                fail(getattr(e, "status_hint", 503) if isinstance(e, SipError) else 503)
                self.endpoint.flush()
                return
            log.warning("media anchoring failed; forwarded as it is: %s", e)
        then(msg)
        self.endpoint.flush()

    def _spawn(self, coro) -> None:
        task = asyncio.get_event_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _now(self) -> float:
        return self.endpoint.now()


def _hp(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _media_work(msg: Message) -> bool:
    if msg.body:
        return True
    if isinstance(msg, Request):
        return msg.method == "BYE" or msg.method == "CANCEL"
    return msg.status >= 300 and msg.cseq.method == "INVITE"  # type: ignore[attr-defined]


def _answer_vias(req: Request, via: Via, flow: Flow) -> list[tuple[str, str]]:
    """The Via headers an answer to ``req`` carries back: as they came, the top one with
    RFC 3261 §18.2.1 ``received`` and RFC 3581 ``rport`` set as a server transaction sets
    them (the sender's transaction finds itself by that Via)."""
    vias = [h for h in req.headers if h[0] == "Via"]
    params = via.params
    host, port = flow.remote
    fill_rport = "rport" in params and params["rport"] is None
    if (fill_rport or via.host_bare != host) and params.get("received") != host:
        add_received = True
    elif fill_rport:
        add_received = False
    else:
        return vias
    first = vias[0][1]
    text = _edited_via(first, str(port) if fill_rport else None, host if add_received else None, "received" in params)
    if text is not None:
        vias[0] = ("Via", text)
        return vias
    p = dict(params)
    if fill_rport:
        p["rport"] = str(port)
    if add_received:
        p["received"] = host
    text = str(Via(via.transport, via.host, via.port, p, via.version))
    if "," in first:
        rest = split_header_list(first)[1:]
        if rest:
            text = ", ".join([text, *rest])
    vias[0] = ("Via", text)
    return vias


def _is_ip(host: str) -> bool:
    if ":" not in host and not host[-1:].isdigit():
        return False  # a domain name (the common case) costs no ipaddress parse
    hit = _IP_SEEN.get(host)
    if hit is None:
        try:
            ipaddress.ip_address(host)
            hit = True
        except ValueError:
            hit = False
        if len(_IP_SEEN) >= 4096:
            _IP_SEEN.clear()
        _IP_SEEN[host] = hit
    return hit


_IP_SEEN: dict[str, bool] = {}  # host → is an IP literal (trunks and SIPp-style URIs repeat theirs)


def _digits(text: str) -> int:
    """How many digits ``text`` holds (str.isdigit's count; ASCII without a Python loop)."""
    if text.isascii():
        return len(text) - len(text.encode("ascii").translate(None, b"0123456789"))
    return sum(c.isdigit() for c in text)


def _retry_after(resp: Response) -> float:
    v = (resp.get("Retry-After") or "").split(";")[0].split("(")[0].strip()
    return float(min(int(v), 300)) if v.isdigit() else 0.0


def _call_id(msg: Message) -> str | None:
    try:
        return msg.call_id
    except SipError:
        return None


def _clean(reason: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in reason)[:120]
