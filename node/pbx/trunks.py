"""Outbound registration of tenants' trunks to their carriers (RFC 3261 §10.2), Asterisk style.

Why: many carriers only send calls to, and only accept calls from, an account that keeps a
binding registered with them. For every trunk with ``register`` set the node keeps one
REGISTER sequence alive: one Call-ID per trunk across refreshes, CSeq always increasing
(§10.2.4), a digest challenge answered once per request, 423 answered with Min-Expires,
refreshes at a fraction of the granted expiry, failures retried with capped backoff.

Theory of operation: the store is polled (``reconcile``) so trunks added, changed or removed
with the CLI take effect without a restart; a changed trunk is un-registered and registered
afresh. Each registration is the ``tu`` of its client transaction, so the PBX service hands
it responses and timeouts (``on_sip_response`` / ``on_sip_timeout``). Timers go through
``call_later`` (the loop's by default), which unit tests replace to fire them by hand.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import quote

from prometheus_client import Gauge

from node.model import Tenant, Trunk
from node.pbx.authn import Authenticator
from node.pbx.call import USER_AGENT
from node.ports import ConfigStore
from node.sip.auth import choose_challenge
from node.sip.errors import SipError
from node.sip.flow import Flow
from node.sip.ids import new_branch, new_call_id, new_tag
from node.sip.message import Request, Response
from node.sip.uri import Uri
from observability import logging as olog

__all__ = ["RegistrationState", "TrunkRegistrations", "TRUNK_REGISTRATIONS"]

log = logging.getLogger("hivepbx.trunks")


class RegistrationState(enum.Enum):
    #: a REGISTER is under way and no binding is known to be alive
    REGISTERING = "registering"
    #: the carrier accepted our binding; a refresh is scheduled
    REGISTERED = "registered"
    #: the last attempt failed; a retry is scheduled
    FAILED = "failed"
    #: un-registered (trunk removed or changed, or the node is stopping)
    UNREGISTERED = "unregistered"


_REGISTERING = RegistrationState.REGISTERING
_REGISTERED = RegistrationState.REGISTERED
_FAILED = RegistrationState.FAILED
_UNREGISTERED = RegistrationState.UNREGISTERED

#: no trunk label: trunks come and go with tenants (see observability.metrics on cardinality)
TRUNK_REGISTRATIONS = Gauge(
    "hivepbx_trunk_registrations", "Outbound trunk registrations to carriers, by state", ["state"]
)
_GAUGE = {s: TRUNK_REGISTRATIONS.labels(s.value) for s in RegistrationState}

#: digest answers per request sequence: a proxy's 407 then the registrar's 401, plus one stale nonce
_MAX_ANSWERS = 3
#: 423s honoured per sequence (a registrar raising Min-Expires again and again is broken)
_MAX_TOO_BRIEF = 2
#: RFC 3261 §20.19: an Expires value above 2**32-1 is not one; we ask for far less
_MAX_EXPIRES = 2**31 - 1
#: never refresh more often than this, whatever the carrier grants
_MIN_REFRESH = 1.0
#: characters a SIP URI's user part may hold unescaped (RFC 3261 §25.1 unreserved / user-unreserved)
_USER_SAFE = "-_.!~*'()&=+$,;?/"

CallLater = Callable[[float, Callable[[], None]], asyncio.TimerHandle]
Resolver = Callable[[str, int, str], Awaitable[list[str]]]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _getaddrinfo(host: str, port: int, transport: str) -> list[str]:
    """Addresses of a carrier's host name (A/AAAA; RFC 3263 NAPTR/SRV is not done)."""
    loop = asyncio.get_running_loop()
    kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
    infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=kind), 10.0)
    out: list[str] = []
    for info in infos:
        addr = info[4][0]
        if addr not in out:
            out.append(addr)
    return out


def _retry_after(resp: Response) -> float | None:
    """Seconds of a Retry-After header (RFC 3261 §20.33), ignoring comment and parameters."""
    value = resp.get("Retry-After")
    if not value:
        return None
    digits = value.strip().split(None, 1)[0].split(";", 1)[0].split("(", 1)[0]
    return float(digits) if digits.isascii() and digits.isdigit() and len(digits) <= 9 else None


class _Registration:
    """One trunk's REGISTER sequence: the transaction user of its client transactions."""

    def __init__(self, owner: "TrunkRegistrations", tenant: Tenant, trunk: Trunk) -> None:
        self.owner = owner
        self.tenant_id = tenant.id
        self.tenant_name = tenant.name
        self.trunk = trunk
        # RFC 3261 §10.2: the same Call-ID for every REGISTER to this registrar, CSeq increasing
        self.call_id = new_call_id()
        self.from_tag = new_tag()
        self.cseq = 0
        self.state = _REGISTERING
        _GAUGE[_REGISTERING].inc()
        self.expires_at: float | None = None
        self.last_status: int | None = None
        self.reason = ""
        self.failures = 0
        self.closed = False
        self._counted = True
        self._txn = None
        self._req: Request | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._flow: Flow | None = None
        self._contact: Uri | None = None
        #: raised by a 423's Min-Expires; kept for later refreshes
        self._min_expires = 0
        #: expiry asked in the current sequence (0 while un-registering)
        self._expires = owner.expires
        self._auth: dict[str, str] = {}
        self._nonces: dict[str, str] = {}
        self._answers = 0
        self._too_brief = 0
        self._leaving: asyncio.Future | None = None

        domain = trunk.from_domain or _bracket(trunk.host)
        self.aor = f"sip:{quote(trunk.username, safe=_USER_SAFE)}@{domain}"
        if trunk.from_domain:
            self.ruri = f"sip:{trunk.from_domain}"
        else:
            self.ruri = f"sip:{_bracket(trunk.host)}" + ("" if trunk.port == 5060 else f":{trunk.port}")

    # ------------------------------------------------------------------ view
    def status(self) -> dict:
        t = self.trunk
        return {
            "tenant": self.tenant_name,
            "tenant_id": self.tenant_id,
            "trunk": t.name,
            "registrar": f"{_bracket(t.host)}:{t.port}",
            "state": self.state.value,
            "expires_at": self.expires_at,
            "last_status": self.last_status,
            "reason": self.reason,
        }

    def _log(self, level: int, msg: str, *args: object) -> None:
        with olog.bind(tenant=self.tenant_name):
            log.log(level, msg, *args, extra={"trunk": self.trunk.name})

    def _set_state(self, state: RegistrationState) -> None:
        if state is self.state:
            return
        if self._counted:
            _GAUGE[self.state].dec()
            _GAUGE[state].inc()
        self.state = state

    def uncount(self) -> None:
        """Leave the gauge (the registration is dropped from the table)."""
        if self._counted:
            _GAUGE[self.state].dec()
            self._counted = False

    # ------------------------------------------------------------------ sequence
    def begin(self) -> None:
        """A fresh REGISTER sequence: the first one, a refresh or a retry."""
        self._timer = None
        if self.closed or self._leaving is not None:
            return
        self._expires = max(self.owner.expires, self._min_expires)
        self._reset_auth()
        self._too_brief = 0
        if self.state is not _REGISTERED:
            self._set_state(_REGISTERING)
        host = self.trunk.host
        if _is_ip(host):
            self._connect([host])
        else:
            self._task = self.owner._spawn(self._resolve_and_connect(host))

    async def _resolve_and_connect(self, host: str) -> None:
        t = self.trunk
        try:
            addresses = await self.owner._resolve(host, t.port, t.transport)
        except Exception as e:  # gaierror, timeout, a resolver bug: all mean "retry later"
            self._task = None
            self._fail(None, f"cannot resolve {host}: {e or type(e).__name__}")
            return
        self._task = None
        if self.closed or self._leaving is not None:
            return
        if not addresses:
            self._fail(None, f"cannot resolve {host}: no address")
            return
        self._connect(addresses)

    def _connect(self, addresses: Iterable[str]) -> None:
        t = self.trunk
        transports = self.owner.endpoint.transports
        error: Exception | None = None
        for address in addresses:
            try:
                self._flow = transports.flow_to(t.transport, address, t.port)
                break
            except OSError as e:
                error = e
        else:
            self._fail(None, f"no socket towards the carrier: {error}")
            return
        self._send()

    def _reset_auth(self) -> None:
        self._auth.clear()
        self._nonces.clear()
        self._answers = 0

    def _build(self) -> Request:
        assert self._flow is not None
        flow = self._flow
        ep = self.owner.endpoint
        sent_by = ep.sent_by(flow)
        user = quote(self.trunk.username, safe=_USER_SAFE)
        tparam = ";transport=tcp" if flow.transport == "tcp" else ""
        contact = f"sip:{user}@{sent_by}{tparam}"
        self._contact = Uri.parse(contact)
        self.cseq += 1
        headers = [
            ("Via", f"SIP/2.0/{flow.via_transport} {sent_by};branch={new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<{self.aor}>;tag={self.from_tag}"),
            ("To", f"<{self.aor}>"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self.cseq} REGISTER"),
            ("Contact", f"<{contact}>"),
            # RFC 3261 §10.2.2: Expires 0 removes the binding
            ("Expires", str(self._expires)),
            ("User-Agent", USER_AGENT),
        ]
        headers.extend(self._auth.items())
        return Request("REGISTER", self.ruri, headers)

    def _send(self) -> None:
        try:
            req = self._build()
            txn = self.owner.endpoint.send_request(req, self._flow)
        except (SipError, OSError) as e:
            self._fail(None, f"cannot send REGISTER: {e}")
            return
        txn.tu = self
        self._txn = txn
        self._req = req

    # ------------------------------------------------------------------ transaction user
    def on_sip_response(self, resp: Response, txn) -> None:
        if txn is not self._txn or self.closed:
            return  # a late answer to a request we gave up on
        status = resp.status
        if status < 200:
            return
        self._txn = None
        self.last_status = status
        if status < 300:
            self._on_success(resp)
        elif status == 401 or status == 407:
            self._on_challenge(resp)
        elif status == 423 and self._leaving is None:
            self._on_too_brief(resp)
        else:
            self._fail(status, f"{status} {resp.reason}", _retry_after(resp))

    def on_sip_timeout(self, txn) -> None:
        if txn is not self._txn or self.closed:
            return
        self._txn = None
        # RFC 3261 §8.1.3.1: a timeout is a 408
        self._fail(408, "no answer from the carrier (transaction timeout)")

    def _on_success(self, resp: Response) -> None:
        if self._leaving is not None:
            self.expires_at = None
            self.reason = "unregistered"
            self._log(logging.INFO, "trunk un-registered")
            self._left()
            return
        granted = self._granted(resp)
        if granted <= 0:
            self._fail(resp.status, f"{resp.status} {resp.reason} without our binding (expires 0)")
            return
        owner = self.owner
        was = self.state
        self.expires_at = owner.clock() + granted
        self.failures = 0
        self.reason = f"{resp.status} {resp.reason}"
        self._set_state(_REGISTERED)
        # a carrier granting more than we asked is refreshed as if it had granted what we asked
        delay = max(_MIN_REFRESH, min(granted, self._expires) * owner.refresh_fraction)
        self._schedule(owner._jittered(delay))
        if was is not _REGISTERED:
            self._log(logging.INFO, "trunk registered for %ds", granted)

    def _granted(self, resp: Response) -> int:
        """RFC 3261 §10.2.4: our Contact's expires parameter, else the Expires header, else
        what we asked (carriers that answer a bare 200 are common)."""
        mine = self._contact
        try:
            contacts = resp.contacts
        except SipError:
            contacts = []
        if mine is not None:
            for c in contacts:
                try:
                    u = c.uri
                    if not (u.is_sip and u.user == mine.user and u.host_bare == mine.host_bare
                            and (u.port or 5060) == (mine.port or 5060)):
                        continue
                except SipError:
                    continue
                value = c.params.get("expires")
                if value is not None and value.isascii() and value.isdigit():
                    return min(int(value), _MAX_EXPIRES)
        try:
            header = resp.expires
        except SipError:
            header = None
        if header is not None:
            return min(header, _MAX_EXPIRES)
        return self._expires

    def _on_challenge(self, resp: Response) -> None:
        status = resp.status
        name = "Proxy-Authenticate" if status == 407 else "WWW-Authenticate"
        challenge = choose_challenge(v for n, v in resp.headers if n == name)
        if challenge is None:
            self._fail(status, f"{status}: no digest challenge we can answer")
            return
        header = "Proxy-Authorization" if status == 407 else "Authorization"
        if self._nonces.get(header) == challenge.nonce and not challenge.stale:
            # RFC 3261 §22.2: the same nonce again means our credentials were refused
            self._fail(status, f"{status}: credentials refused by the carrier")
            return
        if self._answers >= _MAX_ANSWERS:
            self._fail(status, f"{status}: still challenged after {_MAX_ANSWERS} answers")
            return
        t = self.trunk
        assert self._req is not None
        answer = self.owner.auth.answer(resp, self._req, t.username, t.password)
        if answer is None:
            self._fail(status, f"{status}: cannot answer the carrier's challenge")
            return
        self._auth[answer[0]] = answer[1]
        self._nonces[answer[0]] = challenge.nonce
        self._answers += 1
        self._send()

    def _on_too_brief(self, resp: Response) -> None:
        # RFC 3261 §10.2.8: retry with at least Min-Expires
        value = (resp.get("Min-Expires") or "").strip()
        minimum = int(value) if value.isascii() and value.isdigit() and len(value) <= 10 else 0
        if minimum <= self._expires or minimum > _MAX_EXPIRES or self._too_brief >= _MAX_TOO_BRIEF:
            self._fail(423, f"423 {resp.reason} without a usable Min-Expires ({value or 'none'})")
            return
        self._too_brief += 1
        self._min_expires = self._expires = minimum
        self._reset_auth()  # a fresh challenge rather than a replayed nonce
        self._log(logging.INFO, "carrier asks for at least %ds", minimum)
        self._send()

    def _fail(self, status: int | None, reason: str, retry_after: float | None = None) -> None:
        self.last_status = status
        self.reason = reason
        if self._leaving is not None:
            self._log(logging.INFO, "un-REGISTER failed: %s", reason)
            self._left()
            return
        owner = self.owner
        self.failures += 1
        if retry_after is not None:
            delay = min(retry_after, owner.max_retry)
        else:
            delay = owner._jittered(min(owner.retry * 2 ** min(self.failures - 1, 30), owner.max_retry))
        delay = max(delay, _MIN_REFRESH)
        was = self.state
        self._set_state(_FAILED)
        self._schedule(delay)
        self._log(logging.WARNING if was is not _FAILED else logging.INFO,
                  "trunk registration failed: %s; retry in %.0fs", reason, delay)

    def _schedule(self, delay: float) -> None:
        self._cancel_timer()
        self._timer = self.owner._call_later(delay, self.begin)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ------------------------------------------------------------------ leaving
    def unregister(self) -> asyncio.Future:
        """Remove our binding at the carrier (Expires: 0), best effort; the future completes
        when that is answered, fails or is not needed."""
        if self._leaving is not None:
            return self._leaving
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._leaving = fut
        self._cancel_timer()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        in_flight = self._txn is not None
        alive = self.expires_at is not None and self.expires_at > self.owner.clock()
        self._txn = None
        self._set_state(_UNREGISTERED)
        if self.closed or self._flow is None or not (in_flight or alive):
            self.expires_at = None
            fut.set_result(None)
            return fut
        self._expires = 0
        self._reset_auth()
        self._send()
        return fut

    def _left(self) -> None:
        fut = self._leaving
        if fut is not None and not fut.done():
            fut.set_result(None)

    def close(self) -> None:
        """Forget everything in flight: timers, resolution, the transaction's answer."""
        self.closed = True
        self._cancel_timer()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._txn = None
        self._left()


class TrunkRegistrations:
    """Every trunk registration of the node, kept in line with the config store."""

    def __init__(
        self,
        config: ConfigStore,
        endpoint,
        authenticator: Authenticator,
        *,
        refresh_fraction: float = 0.5,
        retry: float = 30.0,
        expires: int = 3600,
        max_retry: float = 600.0,
        poll_interval: float = 5.0,
        stop_timeout: float = 3.0,
        jitter: float = 0.1,
        call_later: CallLater | None = None,
        clock: Callable[[], float] = time.time,
        resolve: Resolver | None = None,
    ) -> None:
        if not 0.0 < refresh_fraction < 1.0:
            raise ValueError(f"refresh_fraction must be between 0 and 1 (exclusive), not {refresh_fraction}")
        if not 0 < expires <= _MAX_EXPIRES:
            raise ValueError(f"expires must be a positive number of seconds, not {expires}")
        if not 0.0 < retry <= max_retry:
            raise ValueError(f"retry must be positive and at most max_retry ({max_retry}), not {retry}")
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), not {jitter}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, not {poll_interval}")
        self.config = config
        self.endpoint = endpoint
        self.auth = authenticator
        self.refresh_fraction = refresh_fraction
        self.retry = retry
        self.expires = int(expires)
        self.max_retry = max_retry
        self.poll_interval = poll_interval
        self.stop_timeout = stop_timeout
        self.jitter = jitter
        self.clock = clock
        self._given_call_later = call_later
        self._resolve: Resolver = resolve or _getaddrinfo
        #: (tenant id, trunk id) → registration
        self._regs: dict[tuple[int, int], _Registration] = {}
        #: removed or changed trunks whose un-REGISTER is still under way
        self._leaving: set[_Registration] = set()
        self._tasks: set[asyncio.Task] = set()
        self._poller: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._stopped = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Register every trunk that asks for it, then follow the store."""
        try:
            await self.reconcile()
        except Exception:
            log.exception("trunk registrations: first look at the store failed; retrying")
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        """Un-register everything (bounded by ``stop_timeout``) and cancel every timer."""
        self._stopped = True
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                pass
            self._poller = None
        async with self._lock:
            regs = list(self._regs.values())
            waits = [r.unregister() for r in regs] + [r.unregister() for r in self._leaving]
            pending = [f for f in waits if not f.done()]
            if pending and self.stop_timeout > 0:
                await asyncio.wait(pending, timeout=self.stop_timeout)
            for r in regs:
                r.close()
            for r in list(self._leaving):
                self._drop(r)
            for task in list(self._tasks):
                task.cancel()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.reconcile()
            except Exception:
                log.exception("trunk registrations: store poll failed")

    async def reconcile(self) -> None:
        """Start registrations for new trunks, restart changed ones, un-register removed ones.
        Any store error leaves everything as it was (never act on a partial view)."""
        async with self._lock:
            if self._stopped:
                return
            wanted: dict[tuple[int, int], tuple[Tenant, Trunk]] = {}
            for tenant in await self.config.list_tenants():
                for trunk in await self.config.list_trunks(tenant.id):
                    # tenancy: a trunk is only ever looked at inside its own tenant
                    if trunk.register and trunk.username and trunk.tenant_id == tenant.id:
                        wanted[(tenant.id, trunk.id)] = (tenant, trunk)
            for key, reg in list(self._regs.items()):
                entry = wanted.get(key)
                if entry is not None and entry[1] == reg.trunk:
                    reg.tenant_name = entry[0].name
                    continue
                del self._regs[key]
                reg._log(logging.INFO, "trunk %s: un-registering", "changed" if entry else "removed")
                self._retire(reg)
            for key, (tenant, trunk) in wanted.items():
                if key not in self._regs:
                    reg = self._regs[key] = _Registration(self, tenant, trunk)
                    reg._log(logging.INFO, "registering trunk with %s", reg.ruri)
                    reg.begin()

    def _retire(self, reg: _Registration) -> None:
        self._leaving.add(reg)
        reg.unregister().add_done_callback(lambda _f: self._drop(reg))

    def _drop(self, reg: _Registration) -> None:
        reg.close()
        if reg in self._leaving:
            self._leaving.discard(reg)
            reg.uncount()

    # ------------------------------------------------------------------ view
    def status(self, tenant_id: int | None = None) -> list[dict]:
        """One dict per registration (those being un-registered included); ``tenant_id``
        scopes it to one tenant, as any tenant-facing view must be."""
        regs = [*self._regs.values(), *self._leaving]
        out = [r.status() for r in regs if tenant_id is None or r.tenant_id == tenant_id]
        out.sort(key=lambda s: (s["tenant_id"], s["trunk"]))
        return out

    # ------------------------------------------------------------------ helpers
    def _call_later(self, delay: float, callback: Callable[[], None]):
        if self._given_call_later is not None:
            return self._given_call_later(delay, callback)
        return asyncio.get_running_loop().call_later(delay, callback)

    def _jittered(self, delay: float) -> float:
        """Spread refreshes and retries of many trunks (never later than asked)."""
        return delay * (1.0 - self.jitter * random.random()) if self.jitter else delay

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("trunk registration task failed", exc_info=task.exception())
