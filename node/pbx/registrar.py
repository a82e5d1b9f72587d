"""Registrar (RFC 3261 §10.3) for tenant extensions.

Theory of operation: the tenant is the domain of the To URI; the extension is the To
user. Every REGISTER must carry digest credentials for that very extension (an extension
cannot register another one, and nothing crosses tenants: lookups are keyed by tenant id).
An unknown tenant or extension is challenged exactly like a known one and then refused
with the same 403 as a wrong password, so a scanner learns nothing (no enumeration).
The source address and transport of the REGISTER are stored with the binding: calls to the
extension go back there (symmetric signalling through NAT, RFC 3581).
"""

from __future__ import annotations

import logging
import time
from dataclasses import fields

from node.model import Binding
from node.pbx.authn import Authenticator, AuthOutcome
from node.ports import ConfigStore, LocationStore
from node.sip.errors import RemoteProtocolError
from node.sip.flow import Flow
from node.sip.message import Request, Response, make_response, parse_contacts, parse_expires
from node.sip.uri import NameAddr

log = logging.getLogger("hivepbx.registrar")


class Registrar:
    def __init__(
        self,
        config: ConfigStore,
        locations: LocationStore,
        auth: Authenticator,
        *,
        min_expires: int = 60,
        max_expires: int = 3600,
        default_expires: int = 3600,
        node_id: str = "local",
        metrics=None,
    ) -> None:
        self.config = config
        self.locations = locations
        self.auth = auth
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = default_expires
        self.node_id = node_id
        self.metrics = metrics

    async def handle(self, req: Request, flow: Flow, to_tag: str) -> Response:
        """The final response to a REGISTER (the caller sends it)."""
        try:
            return await self._handle(req, flow, to_tag)
        except RemoteProtocolError as e:
            return make_response(req, e.status_hint, None, to_tag=to_tag, headers=[("Warning", f'399 hivepbx "{e.reason}"')])

    def challenge(self, req: Request, to_tag: str, now: float) -> Response | None:
        """The 401 for a REGISTER that carries no Authorization header (the caller has looked),
        answered without a task or a store lookup: every phone's first REGISTER, half of the
        registrar's load. The challenge is the same whether the user exists or not (no
        enumeration). None: the request needs the full path."""
        try:
            realm = req.to.uri_host_bare
        except RemoteProtocolError:
            return None
        return make_response(req, 401, None, to_tag=to_tag, headers=self.auth.challenge_headers(realm, now))

    async def _handle(self, req: Request, flow: Flow, to_tag: str) -> Response:
        now = time.time()
        to = req.to
        domain = to.uri_host_bare
        ext_number = to.uri_user_unescaped or ""
        realm = domain
        tenant = await self.config.tenant_by_domain(domain)
        ext = await self.config.get_extension(tenant.id, ext_number) if tenant else None

        outcome, username = self.auth.check(req, realm, ext.password if ext else None, now)
        if outcome is AuthOutcome.MISSING or outcome is AuthOutcome.STALE:
            return make_response(
                req, 401, None, to_tag=to_tag,
                headers=self.auth.challenge_headers(realm, now, stale=outcome is AuthOutcome.STALE),
            )
        if outcome is not AuthOutcome.OK or ext is None or tenant is None or username != ext.number:
            # one answer for every failure: wrong password, unknown user, foreign tenant
            if self.metrics:
                reason = "unknown_user" if ext is None else "bad_response"
                self.metrics.auth_failure(reason)
            log.info("REGISTER refused for %s@%s from %s:%s (%s)", ext_number, domain, *flow.remote, outcome.name)
            return make_response(req, 403, "Forbidden", to_tag=to_tag)

        # RFC 3261 §10.3 step 6: the Contact list. One pass over the headers for what the
        # views req.contacts, req.expires, req.contact_star and req.get would each look for.
        contact_values: list[str] = []
        expires_value = ua = None
        for n, v in req.headers:
            if n == "Contact":
                contact_values.append(v)
            elif n == "Expires":
                if expires_value is None:
                    expires_value = v
            elif n == "User-Agent" and ua is None:
                ua = v
        header_expires = None if expires_value is None else parse_expires(expires_value)
        if contact_values and (len(contact_values) > 1 or "*" in contact_values[0]) and req.contact_star:
            if header_expires != 0 or len(req.get_all("Contact")) != 1:
                return make_response(req, 400, "Bad Request (Contact * needs Expires: 0)", to_tag=to_tag)
            await self.locations.remove_all(tenant.id, ext.number)
            return self._ok(req, await self.locations.lookup(tenant.id, ext.number, now), now, to_tag)

        contacts: list[NameAddr] = parse_contacts(contact_values)
        expiries = [_contact_expires(c, header_expires, self.default_expires) for c in contacts]
        for exp in expiries:
            if 0 < exp < self.min_expires:
                return make_response(
                    req, 423, None, to_tag=to_tag, headers=[("Min-Expires", str(self.min_expires))]
                )
        call_id = req.call_id
        cseq = req.cseq.seq
        current = {b.contact: b for b in await self.locations.lookup(tenant.id, ext.number, now)}
        ua = ua or ""
        for c, exp in zip(contacts, expiries):
            exp = min(exp, self.max_expires)
            key = c.uri_text  # str(c.uri), without building the Uri
            old = current.get(key)
            # §10.3 step 7: same Call-ID with a CSeq not higher is a stale or reordered request
            if old is not None and old.call_id == call_id and cseq <= old.cseq:
                continue
            if exp == 0:
                await self.locations.remove(tenant.id, ext.number, key)
                continue
            q = _q(c)
            await self.locations.save(
                _binding(tenant.id, ext.number, key, flow.remote[0], flow.remote[1], flow.transport,
                         now + exp, call_id, cseq, ua, q, self.node_id)
            )
        return self._ok(req, await self.locations.lookup(tenant.id, ext.number, now), now, to_tag)

    @staticmethod
    def _ok(req: Request, bindings: list[Binding], now: float, to_tag: str) -> Response:
        """The 200 listing every current binding (RFC 3261 §10.3 step 8)."""
        headers = [("Contact", f"<{b.contact}>;expires={max(0, int(b.expires_at - now))}") for b in bindings]
        headers.append(("Date", _http_date(now)))
        return make_response(req, 200, None, to_tag=to_tag, headers=headers)


_new_binding = object.__new__
_BINDING_SETTERS = tuple(Binding.__dict__[f].__set__ for f in Binding.__slots__)  # type: ignore[attr-defined]
assert [f.name for f in fields(Binding)] == list(Binding.__slots__)  # type: ignore[attr-defined]


def _binding(
    tenant_id: int, extension: str, contact: str, source_host: str, source_port: int, transport: str,
    expires_at: float, call_id: str, cseq: int, user_agent: str, q: float, node_id: str,
) -> Binding:
    """``Binding(...)`` for a REGISTER: the frozen dataclass's ``__init__`` sets each of its
    twelve slots through ``object.__setattr__`` by name, which costs twice what setting them
    through the slot descriptors here does (the same end state: the tests compare them)."""
    b = _new_binding(Binding)
    s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11 = _BINDING_SETTERS
    s0(b, tenant_id)
    s1(b, extension)
    s2(b, contact)
    s3(b, source_host)
    s4(b, source_port)
    s5(b, transport)
    s6(b, expires_at)
    s7(b, call_id)
    s8(b, cseq)
    s9(b, user_agent)
    s10(b, q)
    s11(b, node_id)
    return b


_date_memo: tuple[int, str] = (-1, "")


def _http_date(now: float) -> str:
    """RFC 3261 §20.17 Date (RFC 1123 form, GMT); the same text for a whole second."""
    global _date_memo
    second = int(now)
    if _date_memo[0] != second:
        _date_memo = (second, time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(second)))
    return _date_memo[1]


def _contact_expires(c: NameAddr, header_expires: int | None, default: int) -> int:
    v = c.params.get("expires")
    if v is not None:
        v = v.strip()
        if not v.isdigit():
            raise RemoteProtocolError(f"bad expires parameter {v!r}")
        return int(v)
    return default if header_expires is None else header_expires


def _q(c: NameAddr) -> float:
    v = c.params.get("q")
    if v is None:
        return 1.0
    try:
        q = float(v)
    except ValueError:
        raise RemoteProtocolError(f"bad q parameter {v!r}") from None
    if not 0.0 <= q <= 1.0:
        raise RemoteProtocolError(f"q parameter out of range {v!r}")
    return q
