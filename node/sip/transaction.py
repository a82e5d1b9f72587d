"""SIP transactions (RFC 3261 §17, with RFC 6026's Accepted state), sans-I/O.

Theory of operation (aioquic/h11 style): the caller feeds messages and the time in
(``receive``, ``send_request``, ``send_response``, ``handle_timer``) and drains what comes
out (``next_event``, ``datagrams_to_send``, ``get_timer``). Nothing here reads a clock or
touches a socket, so every timer is testable to the exact deadline.

* Four state machines share two slotted classes; the layer drives them, the
  transactions only hold state (no per-transaction closures or callbacks).
* Server transactions are keyed by (branch, sent-by host, sent-by port, method) (§17.2.3),
  ACK folded onto INVITE; branches without the magic cookie fall back to RFC 2543 matching
  by (Call-ID, CSeq number, From tag, top Via, method). Client transactions are keyed by
  (branch, CSeq method) (§17.1.3).
* Each message is serialised once; retransmissions resend the same bytes.
* Fast paths skip header parsing where the raw text decides exactly: a response the TU
  built with ``make_response`` carries its request's Via and CSeq text verbatim, so it is
  found by that text; a received response is found by the ``branch=`` substring of its
  top Via. Either falls back to parsed matching on a miss, so neither changes an outcome.
* Timers live in ``node.sip.timers``: a transaction owns at most two heap entries, a
  retransmission timer (A, E, G) and an end timer (B, F, H, the §9.1 guard); the end timers
  of finished transactions (D, I, J, K, L, M), never cancelled, are FIFO entries instead (no
  object per timer). The zero-length end timers of reliable transports are not scheduled at
  all: the transaction ends on the spot.
* A transaction leaves the tables the moment it terminates; ``.tu`` is the transaction
  user's own slot so it never needs a side table keyed by transaction. (That is also why
  there is no TransactionTerminated event: nothing outside needs to forget a transaction.)
"""

from __future__ import annotations

import enum
import re
from collections import deque
from dataclasses import dataclass
from typing import Callable

from node.sip.errors import LocalProtocolError, RemoteProtocolError
from node.sip.flow import Flow
from node.sip.headers import Via
from node.sip.ids import MAGIC_COOKIE
from node.sip.message import Message, Request, Response, make_response
from node.sip.timers import TimerEntry, Timers
from node.sip.uri import split_header_list

__all__ = [
    "ClientTransaction",
    "RequestReceived",
    "ResponseReceived",
    "ServerTransaction",
    "Transaction",
    "TransactionLayer",
    "TransactionState",
    "TransactionTimedOut",
]

#: RFC 3261 §17.1.1.2: Timer D, "at least 32 seconds" for unreliable transports
TIMER_D = 32.0


class TransactionState(enum.Enum):
    CALLING = "calling"  # client INVITE
    TRYING = "trying"  # non-INVITE, client and server
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"  # server INVITE, after the ACK of a non-2xx
    ACCEPTED = "accepted"  # RFC 6026: INVITE after a 2xx
    TERMINATED = "terminated"


_CALLING = TransactionState.CALLING
_TRYING = TransactionState.TRYING
_PROCEEDING = TransactionState.PROCEEDING
_COMPLETED = TransactionState.COMPLETED
_CONFIRMED = TransactionState.CONFIRMED
_ACCEPTED = TransactionState.ACCEPTED
_TERMINATED = TransactionState.TERMINATED

# timer kinds in the heap
_RETX = 0
_END = 1


class Transaction:
    """State shared by client and server transactions.

    ``id`` is the matching key (hashable, unique among live transactions of its side);
    ``tu`` is free for the transaction user's context."""

    __slots__ = ("id", "request", "flow", "state", "last_response", "tu", "is_invite", "_data", "_interval", "_retx", "_end")

    def __init__(self, key: tuple, request: Request, flow: Flow, state: TransactionState) -> None:
        self.id = key
        self.request = request
        self.flow = flow
        self.state = state
        self.last_response: Response | None = None
        self.tu: object | None = None
        self.is_invite = request.method == "INVITE"
        #: bytes a retransmission resends: the request (client) / the ACK (client INVITE,
        #: Completed) / the last response (server)
        self._data: bytes | None = None
        self._interval = 0.0
        self._retx: TimerEntry | None = None
        self._end: TimerEntry | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id[-1]} {self.id[0]} {self.state.value}>"


class ClientTransaction(Transaction):
    __slots__ = ("_guard",)

    def __init__(self, key: tuple, request: Request, flow: Flow, state: TransactionState) -> None:
        Transaction.__init__(self, key, request, flow, state)
        #: RFC 3261 §9.1: deadline after which a CANCELled INVITE is given up
        self._guard: float | None = None


class ServerTransaction(Transaction):
    __slots__ = ("_text_key",)

    def __init__(self, key: tuple, request: Request, flow: Flow, state: TransactionState) -> None:
        Transaction.__init__(self, key, request, flow, state)
        #: (top Via text, CSeq text) of the request, for the send_response fast path
        self._text_key: tuple[str | None, str | None] | None = None


# --- events -------------------------------------------------------------------------
# Not frozen: a frozen dataclass sets each field through object.__setattr__, which made an
# event cost about 2.7 times as much to build (the layer builds one per message it passes up).


@dataclass(slots=True)
class RequestReceived:
    """A new request (it created ``transaction``), or an ACK for a 2xx (``transaction`` None)."""

    request: Request
    flow: Flow
    transaction: ServerTransaction | None


@dataclass(slots=True)
class ResponseReceived:
    """A response for ``transaction``; None when it matched none (e.g. a 2xx retransmitted
    after Timer M: the TU re-ACKs it from its dialog)."""

    response: Response
    transaction: ClientTransaction | None


@dataclass(slots=True)
class TransactionTimedOut:
    """Timer B/F (client: treat as 408, RFC 3261 §8.1.3.1), the RFC 3261 §9.1 guard of a
    CANCELled INVITE that never got its final response, or Timer H (server: the ACK of a
    non-2xx final never came)."""

    transaction: Transaction


Event = RequestReceived | ResponseReceived | TransactionTimedOut


# --- matching keys -------------------------------------------------------------------


def _legacy_key(msg: Message, via: Via, method: str) -> tuple:
    """RFC 3261 §17.2.3 fallback for RFC 2543 peers (no magic cookie), simplified: the
    Request-URI and To tag are left out so that a response can be matched too."""
    return (msg.call_id, msg.cseq.seq, msg.from_.tag, via.transport, via.host.lower(), via.port, method)


def _server_key(msg: Message, via: Via, method: str) -> tuple:
    branch = via.branch
    if branch is not None and branch.startswith(MAGIC_COOKIE):
        return (branch, via.host.lower(), via.port, method)
    return _legacy_key(msg, via, method)


def _stamp_via(req: Request, via: Via, flow: Flow) -> str | None:
    """RFC 3261 §18.2.1 ``received`` and RFC 3581 §4 ``rport`` on the top Via of a request
    that starts a transaction, so responses (and the TU's stateless sends) can be routed
    from the Via alone. The cached Via view is updated in place with the header text.
    Returns the text of the first Via header line as it now is."""
    params = via.params
    host, port = flow.remote
    rport = None
    if "rport" in params and params["rport"] is None:
        params["rport"] = rport = str(port)
    had_received = "received" in params
    received = None
    if rport is not None or via.host_bare != host:
        if params.get("received") != host:
            params["received"] = received = host
    headers = req.headers
    for i, (name, value) in enumerate(headers):
        if name == "Via":
            if rport is None and received is None:
                return value
            text = _edited_via(value, rport, received, had_received)
            if text is None:
                text = str(via)
                if "," in value:
                    rest = split_header_list(value)[1:]
                    if rest:
                        text = ", ".join([text, *rest])
            headers[i] = ("Via", text)
            return text
    return None  # pragma: no cover - a parsed top Via implies a Via header


def _edited_via(value: str, rport: str | None, received: str | None, had_received: bool) -> str | None:
    """``value`` (one Via) with the value of its bare ``;rport`` filled in and ``;received``
    appended, by editing the text: the same parameters, in the same order, as ``str(via)``
    of the updated view, without formatting it afresh. None when the text is not that simple
    (several Vias on the line, quotes, a received to replace, rport spelt otherwise)."""
    if (received is not None and had_received) or "," in value or '"' in value:
        return None
    if rport is not None:
        j = value.find(";rport") + 6
        if j < 6 or (j < len(value) and value[j] != ";") or value.lower().count(";rport") != 1:
            return None
        value = f"{value[:j]}={rport}{value[j:]}"
    if received is not None:
        if ";received" in value.lower():
            return None
        value = f"{value};received={received}"
    return value


def _text_key(msg: Message) -> tuple[str | None, str | None]:
    """(first Via line, CSeq) as raw text, in one pass over the headers."""
    via = cseq = None
    for name, value in msg.headers:
        if name == "Via":
            if via is None:
                via = value
                if cseq is not None:
                    break
        elif name == "CSeq":
            cseq = value
            if via is not None:
                break
    return via, cseq


#: the branch of the top Via, straight from its text (the common spelling only; never past
#: the first comma, which may start the next Via)
_BRANCH_RE = re.compile(r"[^,]*?;\s*branch=([^;,\s]+)", re.IGNORECASE)


def _flow_from_via(via: Via) -> Flow:
    """RFC 3261 §18.2.2 with RFC 3581 §4: where a response goes without its request's flow."""
    params = via.params
    transport = via.transport.lower()
    received = params.get("received")
    host = received or via.host_bare
    if transport == "udp":
        maddr = params.get("maddr")
        if maddr:
            return Flow(transport, (maddr, via.port or 5060), ("", 0))
        rport = params.get("rport")
        port = int(rport) if rport and rport.isdigit() else (via.port or 5060)
        return Flow(transport, (host, port), ("", 0))
    return Flow(transport, (host, via.port or (5061 if transport == "tls" else 5060)), ("", 0))


def _ack_for(req: Request, resp: Response) -> Request:
    """RFC 3261 §17.1.1.3: the ACK of a non-2xx final, built by the transaction itself."""
    via = req.get("Via") or ""
    if "," in via:
        via = split_header_list(via)[0]
    headers = [
        ("Via", via),
        ("Max-Forwards", "70"),
        ("From", req.get("From") or ""),
        ("To", resp.get("To") or ""),
        ("Call-ID", req.get("Call-ID") or ""),
        ("CSeq", f"{req.cseq.seq} ACK"),
    ]
    for name, value in req.headers:
        if name == "Route":
            headers.append((name, value))
    return Request("ACK", req.uri_text, headers)


# --- the layer -----------------------------------------------------------------------


class TransactionLayer:
    """Every client and server transaction of one SIP endpoint."""

    def __init__(self, *, t1: float = 0.5, t2: float = 4.0, t4: float = 5.0, send_100_trying: bool = True) -> None:
        self.t1 = t1
        self.t2 = t2
        self.t4 = t4
        self.send_100_trying = send_100_trying
        #: Timers B, F, H, J, L, M and the §9.1 CANCEL guard
        self._t64 = 64 * t1
        self._clients: dict[tuple, ClientTransaction] = {}
        self._servers: dict[tuple, ServerTransaction] = {}
        self._servers_by_text: dict[tuple, ServerTransaction] = {}
        self._timers = Timers()
        self._events: deque[Event] = deque()
        self._out: list[tuple[bytes, Flow]] = []
        # flows of INVITE server transactions that ended in Accepted, for a TU's late 2xx
        # retransmission; two generations rotated every 64*T1 keep it bounded
        self._recent: dict[tuple, Flow] = {}
        self._recent_old: dict[tuple, Flow] = {}
        self._recent_rotate_at = 0.0
        #: the TU's stateless answer (Kamailio's sl): called with (request, flow) for a new
        #: request other than ACK/INVITE, before any server transaction exists; a Response
        #: it returns is sent on the request's flow and no transaction is made (no timers,
        #: no table entry). For answers that need no retransmission absorption, such as the
        #: 401 to a REGISTER without credentials: a retransmitted request simply gets the
        #: answer again. None (the default) or a None result: the usual transaction.
        self.stateless_responder: Callable[[Request, Flow], Response | None] | None = None

    # ------------------------------------------------------------------ outputs
    def next_event(self) -> Event | None:
        events = self._events
        return events.popleft() if events else None

    def datagrams_to_send(self) -> list[tuple[bytes, Flow]]:
        out = self._out
        self._out = []
        return out

    def get_timer(self) -> float | None:
        return self._timers.next_deadline()

    @property
    def transaction_count(self) -> int:
        return len(self._clients) + len(self._servers)

    def client_invites(self) -> list[ClientTransaction]:
        """INVITE client transactions still in the table (a TU looking for its own, e.g.
        forks it CANCELled whose final response has not come yet)."""
        return [t for t in self._clients.values() if t.is_invite]

    # ------------------------------------------------------------------ inputs
    def receive(self, msg: Message, flow: Flow, now: float) -> None:
        """A parsed message from ``flow``. Raises RemoteProtocolError (with ``.message`` set,
        as the parser does) when a header the matching needs is malformed; nothing changed."""
        if isinstance(msg, Request):
            self._receive_request(msg, flow, now)
        else:
            self._receive_response(msg, now)  # type: ignore[arg-type]

    def send_request(self, req: Request, flow: Flow, now: float) -> ClientTransaction:
        method = req.method
        if method == "ACK":
            raise LocalProtocolError("an ACK is not a transaction (RFC 3261 §17.1.1.3): use send_stateless")
        try:
            branch = req.top_via.branch
        except RemoteProtocolError as e:
            raise LocalProtocolError(f"request to send has a bad Via: {e.reason}") from e
        if not branch:
            raise LocalProtocolError("request to send has no Via branch")
        key = (branch, method)
        clients = self._clients
        if key in clients:
            raise LocalProtocolError(f"branch {branch} is already used by a {method} transaction")
        invite = method == "INVITE"
        txn = ClientTransaction(key, req, flow, _CALLING if invite else _TRYING)
        data = txn._data = req.to_bytes()
        self._out.append((data, flow))
        clients[key] = txn
        timers = self._timers
        if not flow.reliable:
            # Timer A (§17.1.1.2) / Timer E (§17.1.2.2)
            txn._interval = self.t1
            txn._retx = timers.schedule(now + self.t1, txn, _RETX)
        # Timer B / Timer F
        txn._end = timers.schedule(now + self._t64, txn, _END)
        if method == "CANCEL":
            self._guard_cancelled_invite(branch, now)
        return txn

    def send_response(self, resp: Response, now: float) -> None:
        """A response from the TU, for the server transaction it matches; sent statelessly
        when none does. Responses the state machine forbids (a second final) are discarded
        as RFC 3261 §17.2.1/§17.2.2 require."""
        txn = self._servers_by_text.get(_text_key(resp))
        if txn is None:
            try:
                via = resp.top_via
                key = _server_key(resp, via, resp.cseq.method)
            except RemoteProtocolError as e:
                raise LocalProtocolError(f"response to send cannot be matched: {e.reason}") from e
            txn = self._servers.get(key)
        if txn is None:
            if key[-1] == "ACK":
                raise LocalProtocolError("an ACK is never answered")
            flow = self._recent.get(key) or self._recent_old.get(key) or _flow_from_via(via)
            self._out.append((resp.to_bytes(), flow))
            return
        status = resp.status
        state = txn.state
        if txn.is_invite:
            if state is _PROCEEDING:
                data = txn._data = resp.to_bytes()
                txn.last_response = resp
                self._out.append((data, txn.flow))
                if status >= 300:
                    # §17.2.1: Timer G retransmits until the ACK, Timer H gives up on it
                    txn.state = _COMPLETED
                    timers = self._timers
                    if not txn.flow.reliable:
                        txn._interval = self.t1
                        txn._retx = timers.schedule(now + self.t1, txn, _RETX)
                    txn._end = timers.schedule(now + self._t64, txn, _END)
                elif status >= 200:
                    # RFC 6026 §7.1: Accepted; the TU retransmits its 2xx; Timer L
                    txn.state = _ACCEPTED
                    self._end_after(txn, self._t64, now)
            elif state is _ACCEPTED and 200 <= status < 300:
                again = txn._data if resp is txn.last_response else resp.to_bytes()
                self._out.append((again, txn.flow))  # type: ignore[arg-type]
        elif state is _TRYING or state is _PROCEEDING:
            data = txn._data = resp.to_bytes()
            txn.last_response = resp
            self._out.append((data, txn.flow))
            if status >= 200:
                # §17.2.2: Completed absorbs retransmissions for Timer J
                txn.state = _COMPLETED
                if txn.flow.reliable:
                    self._terminate(txn)
                else:
                    self._end_after(txn, self._t64, now)
                    # for its 32 s in Completed a retransmission needs only the key and the
                    # bytes of the answer: let the parsed request and response go (a
                    # registration storm keeps ~250,000 of these alive), and the text-key
                    # entry (a second final from the TU is rare: it takes the parsed match)
                    txn.request = None  # type: ignore[assignment]
                    txn.last_response = None
                    text_key = txn._text_key
                    if text_key is not None:
                        if self._servers_by_text.get(text_key) is txn:
                            del self._servers_by_text[text_key]
                        txn._text_key = None
            else:
                txn.state = _PROCEEDING

    def send_stateless(self, msg: Message, flow: Flow) -> None:
        """Outside any transaction: the ACK of a 2xx, a 400 to something unparseable."""
        self._out.append((msg.to_bytes(), flow))

    def handle_timer(self, now: float) -> None:
        timers = self._timers
        # the end timers of finished transactions (D, I, J, K, L, M): no events but Timer L's
        # remembered flow, so their order against the heap's does not matter
        ended = timers.pop_lingering(now)
        while ended is not None:
            if ended.state is not _TERMINATED:  # type: ignore[attr-defined]
                self._on_end_timer(ended, now)  # type: ignore[arg-type]
            ended = timers.pop_lingering(now)
        entry = timers.pop_due(now)
        while entry is not None:
            txn: Transaction = entry[2]
            if entry[3] == _RETX:
                txn._retx = None
                self._on_retransmit_timer(txn, now)
            else:
                txn._end = None
                self._on_end_timer(txn, now)
            entry = timers.pop_due(now)

    def find_invite_server(self, cancel: Request) -> ServerTransaction | None:
        """RFC 3261 §9.2: the INVITE server transaction a CANCEL is for (in whatever state:
        the TU decides what a CANCEL of an answered INVITE means)."""
        via = cancel.top_via
        return self._servers.get(_server_key(cancel, via, "INVITE"))

    # ------------------------------------------------------------------ requests in
    def _receive_request(self, req: Request, flow: Flow, now: float) -> None:
        method = req.method
        try:
            via = req.top_via
            key = _server_key(req, via, "INVITE" if method == "ACK" else method)
        except RemoteProtocolError as e:
            e.message = req  # type: ignore[attr-defined]
            raise
        servers = self._servers
        txn = servers.get(key)
        if method == "ACK":
            if txn is not None:
                state = txn.state
                if state is _COMPLETED:
                    # §17.2.1: the ACK of our non-2xx; Timer I absorbs its retransmissions
                    txn.state = _CONFIRMED
                    self._cancel_timers(txn)
                    if txn.flow.reliable:
                        self._terminate(txn)
                    else:
                        self._end_after(txn, self.t4, now)  # Timer I
                    return
                if state is _CONFIRMED:
                    return
            # RFC 6026 §7.1: an ACK for a 2xx is the TU's (even one reusing the INVITE branch)
            self._events.append(RequestReceived(req, flow, None))
            return
        if txn is not None:
            # a retransmission (§17.2.1, §17.2.2): answer with the last response, if any;
            # absorbed in Accepted (the TU retransmits its 2xx) and Confirmed
            state = txn.state
            data = txn._data
            if data is not None and state is not _ACCEPTED and state is not _CONFIRMED:
                self._out.append((data, flow))
            return
        via_text = _stamp_via(req, via, flow)
        responder = self.stateless_responder
        if responder is not None and method != "INVITE":
            try:
                resp = responder(req, flow)
            except Exception:
                resp = None  # the TU's full path gets the request (and reports what fails there)
            if resp is not None:
                self._out.append((resp.to_bytes(), flow))
                return
        if method == "INVITE":
            txn = ServerTransaction(key, req, flow, _PROCEEDING)
            if self.send_100_trying:
                # §17.2.1: a 100 at once stops the client's Timer A
                trying = make_response(req, 100)
                data = txn._data = trying.to_bytes()
                txn.last_response = trying
                self._out.append((data, flow))
        else:
            txn = ServerTransaction(key, req, flow, _TRYING)
        servers[key] = txn
        if len(key) == 4:
            # only magic-cookie keys: RFC 2543 ones need more than the Via and CSeq text
            cseq_text = None
            for name, value in req.headers:
                if name == "CSeq":
                    cseq_text = value
                    break
            text_key = txn._text_key = (via_text, cseq_text)
            self._servers_by_text[text_key] = txn
        self._events.append(RequestReceived(req, flow, txn))

    # ------------------------------------------------------------------ responses in
    def find_client(self, resp: Response) -> ClientTransaction | None:
        """The client transaction a received response answers (RFC 3261 §17.1.3), or None.
        Raises RemoteProtocolError (``.message`` set) when its Via or CSeq is malformed."""
        txn = None
        try:
            method = resp.cseq.method
            h = resp.headers
            # the top Via is nearly always the first header line (a parsed message keeps the order)
            via_text = h[0][1] if h and h[0][0] == "Via" else resp.get("Via")
            m = _BRANCH_RE.match(via_text) if via_text else None
            if m is not None:
                txn = self._clients.get((m.group(1), method))
            if txn is None:
                txn = self._clients.get((resp.top_via.branch, method))
        except RemoteProtocolError as e:
            e.message = resp  # type: ignore[attr-defined]
            raise
        return txn

    def absorb_trying(self, txn: ClientTransaction, resp: Response) -> bool | None:
        """A received 100 for ``txn`` (from ``find_client``), taken as ``receive`` takes it
        but with no event queued: for a TU that handles a 100 hop by hop and needs no event
        for it (a proxy: the SBC). True: the state moved as ``receive`` moves it (the TU
        would have had an event); False: nothing to do (``receive`` queues no event either);
        None: not taken, nothing changed (not a 100, or a CANCELled INVITE whose §9.1 guard
        this would arm): use ``receive``. It never arms a timer, so nothing needs re-arming."""
        if resp.status != 100:
            return None
        state = txn.state
        if txn.is_invite:
            if state is _CALLING:
                if txn._guard is not None:
                    return None
                txn.last_response = resp
                txn.state = _PROCEEDING
                self._cancel_timers(txn)  # §17.1.1.2: Timers A and B only run in Calling
                return True
            if state is _PROCEEDING:
                txn.last_response = resp
                return True
            return False
        if state is _TRYING or state is _PROCEEDING:
            txn.last_response = resp
            txn.state = _PROCEEDING
            return True
        return False

    def _receive_response(self, resp: Response, now: float) -> None:
        txn = self.find_client(resp)
        if txn is None:
            self._events.append(ResponseReceived(resp, None))
            return
        status = resp.status
        state = txn.state
        if txn.is_invite:
            if state is _CALLING or state is _PROCEEDING:
                txn.last_response = resp
                if status < 200:
                    if state is _CALLING:
                        # §17.1.1.2: Timers A and B only run in Calling
                        txn.state = _PROCEEDING
                        self._cancel_timers(txn)
                        if txn._guard is not None:
                            txn._end = self._timers.schedule(txn._guard, txn, _END)
                elif status < 300:
                    # RFC 6026 §8.4: Accepted passes further 2xx (forks) to the TU; Timer M
                    txn.state = _ACCEPTED
                    self._cancel_timers(txn)
                    self._end_after(txn, self._t64, now)
                else:
                    # §17.1.1.2/§17.1.1.3: ACK it ourselves; Timer D absorbs retransmissions
                    txn.state = _COMPLETED
                    self._cancel_timers(txn)
                    data = txn._data = _ack_for(txn.request, resp).to_bytes()
                    self._out.append((data, txn.flow))
                    if txn.flow.reliable:
                        self._terminate(txn)
                    else:
                        self._end_after(txn, TIMER_D, now)
                self._events.append(ResponseReceived(resp, txn))
            elif state is _ACCEPTED:
                if 200 <= status < 300:
                    self._events.append(ResponseReceived(resp, txn))
            elif state is _COMPLETED and status >= 300:
                self._out.append((txn._data, txn.flow))  # type: ignore[arg-type]
            return
        if state is _TRYING or state is _PROCEEDING:
            txn.last_response = resp
            if status < 200:
                txn.state = _PROCEEDING
            else:
                # §17.1.2.2: Timer K absorbs retransmitted finals
                txn.state = _COMPLETED
                self._cancel_timers(txn)
                if txn.flow.reliable:
                    self._terminate(txn)
                else:
                    self._end_after(txn, self.t4, now)
            self._events.append(ResponseReceived(resp, txn))

    # ------------------------------------------------------------------ timers
    def _on_retransmit_timer(self, txn: Transaction, now: float) -> None:
        state = txn.state
        if state is _CALLING:
            txn._interval *= 2  # Timer A: doubles, no cap
        elif state is _TRYING:
            txn._interval = min(txn._interval * 2, self.t2)  # Timer E
        elif state is _PROCEEDING:
            txn._interval = self.t2  # Timer E after a provisional
        elif state is _COMPLETED and txn.is_invite:
            txn._interval = min(txn._interval * 2, self.t2)  # Timer G
        else:  # pragma: no cover - retransmission timers are cancelled on leaving these states
            return
        self._out.append((txn._data, txn.flow))  # type: ignore[arg-type]
        txn._retx = self._timers.schedule(now + txn._interval, txn, _RETX)

    def _on_end_timer(self, txn: Transaction, now: float) -> None:
        state = txn.state
        if isinstance(txn, ClientTransaction):
            timed_out = state is _CALLING or state is _TRYING or state is _PROCEEDING
        else:
            timed_out = state is _COMPLETED and txn.is_invite  # Timer H
            if state is _ACCEPTED:
                self._remember_flow(txn.id, txn.flow, now)
        self._terminate(txn)
        if timed_out:
            self._events.append(TransactionTimedOut(txn))

    def _guard_cancelled_invite(self, branch: str, now: float) -> None:
        """RFC 3261 §9.1: an INVITE whose CANCEL got no final response within 64*T1 is
        given up (TransactionTimedOut), so a silent callee cannot leak its transaction."""
        inv = self._clients.get((branch, "INVITE"))
        if inv is None or (inv.state is not _CALLING and inv.state is not _PROCEEDING):
            return
        inv._guard = at = now + self._t64
        if inv.state is _PROCEEDING and inv._end is None:
            inv._end = self._timers.schedule(at, inv, _END)

    def _end_after(self, txn: Transaction, delay: float, now: float) -> None:
        """An end timer that is never cancelled (D, I, J, K, L, M): a FIFO entry, or a heap
        entry if the clock went back."""
        timers = self._timers
        if not timers.linger(delay, now, txn):
            txn._end = timers.schedule(now + delay, txn, _END)

    def _cancel_timers(self, txn: Transaction) -> None:
        timers = self._timers
        if txn._retx is not None:
            timers.cancel(txn._retx)
            txn._retx = None
        if txn._end is not None:
            timers.cancel(txn._end)
            txn._end = None

    def _terminate(self, txn: Transaction) -> None:
        self._cancel_timers(txn)
        txn.state = _TERMINATED
        if not isinstance(txn, ServerTransaction):
            table: dict = self._clients
        else:
            table = self._servers
            text_key = txn._text_key
            if text_key is not None and self._servers_by_text.get(text_key) is txn:
                del self._servers_by_text[text_key]
        if table.get(txn.id) is txn:
            del table[txn.id]

    def _remember_flow(self, key: tuple, flow: Flow, now: float) -> None:
        if now >= self._recent_rotate_at:
            self._recent_old = self._recent
            self._recent = {}
            self._recent_rotate_at = now + self._t64
        self._recent[key] = flow
