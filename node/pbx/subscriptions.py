"""SIP event subscriptions (RFC 6665), the notifier side, and the busy lamp packages on it.

``SubscriptionServer`` is package-agnostic: it authenticates a SUBSCRIBE like an INVITE
(digest in the caller's tenant realm), scopes the watched resource to that tenant, keeps
the subscription dialog, refreshes and expires it, and sends NOTIFYs. A package (an
``EventPackage``: ``dialog`` and ``presence`` here, ``message-summary`` for voicemail later)
only says whether a resource exists and renders its current state; when that state changes
it calls ``server.changed(package, tenant_id, resource)``.

``LineStates`` turns call state changes (the service's ``call_listeners``: early, confirmed,
terminated) into per-extension dialog state for the ``dialog`` (RFC 4235) and ``presence``
(RFC 3856, minimal PIDF) packages. It is per node; node.pbx.blf_bus shares it between the
nodes of a cluster over the event bus (its ``publish`` hook, keyed ``tenant:extension``).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from typing import Protocol

from prometheus_client import Counter, Gauge

from node.model import Tenant
from node.pbx.authn import Authenticator, AuthOutcome
from node.ports import ConfigStore
from node.sip.dialog import Dialog
from node.sip.errors import SipError
from node.sip.events import DIALOG_INFO, PIDF, DialogInfo, dialog_info_xml, parse_event, pidf_xml
from node.sip.flow import Flow
from node.sip.ids import new_tag
from node.sip.message import Request, Response, make_response

log = logging.getLogger("hivepbx.subscriptions")

_servers: "weakref.WeakSet[SubscriptionServer]" = weakref.WeakSet()
SUBSCRIPTIONS = Gauge("hivepbx_event_subscriptions", "Active SIP event subscriptions (busy lamps, presence, ...)")
SUBSCRIPTIONS.set_function(lambda: float(sum(s.count for s in list(_servers))))
NOTIFIES = Counter("hivepbx_event_notifies", "NOTIFY requests sent to subscribers")
SUBSCRIBE_REFUSED = Counter("hivepbx_event_subscribe_refused", "SUBSCRIBE requests answered with an error")


class EventPackage(Protocol):
    """What a package tells the server. It may also define ``authorize(tenant, subscriber,
    resource) -> bool`` to narrow who may watch what within the tenant (message-summary: a
    mailbox's own extension only); without it any extension of the tenant may watch."""

    name: str
    content_type: str
    default_expires: int

    async def resource_exists(self, tenant: Tenant, resource: str) -> bool: ...
    def body(self, tenant: Tenant, resource: str, version: int) -> bytes: ...


class Subscription:
    """One subscription dialog (we are the notifier, its UAS)."""

    __slots__ = ("server", "package", "tenant", "resource", "subscriber", "dialog", "ev_id", "expires_at",
                 "timer", "version", "ended")

    def __init__(self, server: "SubscriptionServer", package: EventPackage, tenant: Tenant, resource: str,
                 subscriber: str, dialog: Dialog, ev_id: str | None) -> None:
        self.server = server
        self.package = package
        self.tenant = tenant
        self.resource = resource
        self.subscriber = subscriber
        self.dialog = dialog
        self.ev_id = ev_id
        self.expires_at = 0.0
        self.timer = None
        self.version = 0
        self.ended = False

    # transaction user of our NOTIFYs
    def on_sip_response(self, resp: Response, txn) -> None:
        if resp.status >= 300 and not self.ended:
            # 481: the subscriber forgot us; any other failure: stop rather than retry forever
            log.info("NOTIFY for %s/%s answered %d: subscription ended", self.package.name, self.resource, resp.status)
            self.server.remove(self)

    def on_sip_timeout(self, txn) -> None:
        if not self.ended:
            log.info("NOTIFY for %s/%s timed out: subscription ended", self.package.name, self.resource)
            self.server.remove(self)


class SubscriptionServer:
    def __init__(self, endpoint, config: ConfigStore, auth: Authenticator, loop, *,
                 min_expires: int = 60, max_expires: int = 3600, max_per_resource: int = 200) -> None:
        self.endpoint = endpoint
        self.config = config
        self.auth = auth
        self.loop = loop
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.max_per_resource = max_per_resource
        self.packages: dict[str, EventPackage] = {}
        self._dialogs: dict[tuple[str, str], Subscription] = {}
        self._watchers: dict[tuple[str, int, str], set[Subscription]] = {}
        _servers.add(self)

    def register(self, package: EventPackage) -> None:
        self.packages[package.name] = package

    @property
    def allow_events(self) -> str:
        return ", ".join(self.packages)

    @property
    def count(self) -> int:
        return len(self._dialogs)

    # ------------------------------------------------------------------ SUBSCRIBE
    async def handle_subscribe(self, req: Request, flow: Flow) -> None:
        """An out-of-dialog SUBSCRIBE: always answered, never raises."""
        try:
            self._respond(*await self._subscribe(req, flow))
        except SipError as e:
            self._reply(req, e.status_hint, e.reason[:120])
        except Exception:
            log.exception("SUBSCRIBE handling failed")
            self._reply(req, 500, None)

    async def _subscribe(self, req: Request, flow: Flow):
        package_name, ev_id = parse_event(req.get("Event"))
        package = self.packages.get(package_name)
        if package is None:
            return req, 489, None, [("Allow-Events", self.allow_events)], None
        expires = self._expires(req, package.default_expires)
        if 0 < expires < self.min_expires:
            return req, 423, None, [("Min-Expires", str(self.min_expires))], None
        accept = [a.strip().split(";")[0].lower() for v in req.get_all("Accept") for a in v.split(",")]
        if accept and package.content_type not in accept and "*/*" not in accept:
            return req, 406, None, [("Accept", package.content_type)], None
        now = time.time()
        domain = req.from_.uri.host_bare
        tenant = await self.config.tenant_by_domain(domain)
        user = req.from_.uri.user_unescaped or ""
        ext = await self.config.get_extension(tenant.id, user) if tenant else None
        outcome, username = self.auth.check(req, domain, ext.password if ext else None, now, proxy=True)
        if outcome is AuthOutcome.MISSING or outcome is AuthOutcome.STALE:
            return req, 407, None, self.auth.challenge_headers(domain, now, outcome is AuthOutcome.STALE, proxy=True), None
        if outcome is not AuthOutcome.OK or ext is None or tenant is None or username != ext.number:
            return req, 403, "Forbidden", None, None
        # the watched resource lives in the subscriber's tenant, whatever the Request-URI says
        host = req.uri.host_bare
        if host.lower() != tenant.domain.lower():
            other = await self.config.tenant_by_domain(host)
            if other is not None and other.id != tenant.id:
                return req, 403, "Forbidden (another tenant's resource)", None, None
        resource = req.uri.user_unescaped or ""
        if not resource or not await package.resource_exists(tenant, resource):
            return req, 404, "Not Found", None, None
        authorize = getattr(package, "authorize", None)
        if authorize is not None and not authorize(tenant, ext.number, resource):
            return req, 403, "Forbidden", None, None
        if len(self._watchers.get((package.name, tenant.id, resource), ())) >= self.max_per_resource:
            return req, 503, "Service Unavailable (too many watchers)", [("Retry-After", "60")], None
        to_tag = new_tag()
        contact = f"<sip:{resource}@{self.endpoint.sent_by(flow)}>"
        sub = Subscription(self, package, tenant, resource, ext.number, Dialog.as_uas(req, to_tag, flow, contact), ev_id)
        headers = [("Expires", str(expires)), ("Contact", contact), ("Allow-Events", self.allow_events)]
        return req, 200, None, headers, (sub, expires)

    def _respond(self, req: Request, status: int, reason, headers, created) -> None:
        to_tag = created[0].dialog.local_tag if created else new_tag()
        if status >= 300:
            SUBSCRIBE_REFUSED.inc()
        self.endpoint.send_response(make_response(req, status, reason, to_tag=to_tag, headers=headers))
        if created:
            sub, expires = created
            if expires == 0:  # a fetch: one NOTIFY with the state, no subscription (RFC 6665 §4.4.3)
                self._notify(sub, "terminated;reason=timeout")
                return
            self._add(sub)
            self._arm(sub, expires)
            self._notify(sub)

    def _reply(self, req: Request, status: int, reason: str | None, headers=None) -> None:
        SUBSCRIBE_REFUSED.inc()
        self.endpoint.send_response(make_response(req, status, reason, to_tag=new_tag(), headers=headers))

    def _expires(self, req: Request, default: int) -> int:
        raw = req.get("Expires")
        if raw is None:
            return min(default, self.max_expires)
        try:
            value = int(raw.strip())
        except ValueError:
            raise SipError("Bad Expires header", 400) from None
        if value < 0:
            raise SipError("Bad Expires header", 400)
        return min(value, self.max_expires)

    def in_dialog(self, req: Request, txn) -> bool:
        """A request inside one of our subscription dialogs (refresh, unsubscribe); False if
        the dialog is not ours."""
        sub = self._dialogs.get((req.call_id, req.to.tag or ""))
        if sub is None:
            return False
        if req.method != "SUBSCRIBE":
            self.endpoint.send_response(make_response(req, 405, None, headers=[("Allow", "SUBSCRIBE")]))
            return True
        if not sub.dialog.accepts(req):
            self.endpoint.send_response(make_response(req, 500, "Out of order CSeq"))
            return True
        try:
            expires = self._expires(req, sub.package.default_expires)
        except SipError as e:
            self.endpoint.send_response(make_response(req, e.status_hint, e.reason))
            return True
        if 0 < expires < self.min_expires:
            self.endpoint.send_response(make_response(req, 423, None, headers=[("Min-Expires", str(self.min_expires))]))
            return True
        self.endpoint.send_response(make_response(req, 200, None, headers=[("Expires", str(expires))]))
        if expires == 0:
            self._notify(sub, "terminated;reason=timeout")
            self.remove(sub)
        else:
            sub.dialog.update_target(req)
            self._arm(sub, expires)
            self._notify(sub)
        return True

    # ------------------------------------------------------------------ state and NOTIFY
    def changed(self, package: str, tenant_id: int, resource: str) -> None:
        """The package's state of ``resource`` changed: NOTIFY every watcher now."""
        watchers = self._watchers.get((package, tenant_id, resource)) if self._watchers else None
        if watchers:  # most lines have no lamp watching them
            for sub in list(watchers):
                self._notify(sub)

    def _notify(self, sub: Subscription, terminated: str | None = None) -> None:
        sub.version += 1
        if terminated:
            state = terminated
        else:
            state = f"active;expires={max(0, int(sub.expires_at - self.loop.time()))}"
        event = sub.package.name + (f";id={sub.ev_id}" if sub.ev_id else "")
        try:
            body = sub.package.body(sub.tenant, sub.resource, sub.version - 1)
        except Exception:
            log.exception("rendering %s state of %s failed", sub.package.name, sub.resource)
            return
        ep = self.endpoint
        notify = sub.dialog.create_request(
            "NOTIFY", ep.sent_by(sub.dialog.flow), body=body, content_type=sub.package.content_type,
            extra=[("Event", event), ("Subscription-State", state)],
        )
        txn = ep.send_request(notify, sub.dialog.flow)
        NOTIFIES.inc()
        if txn is not None:
            txn.tu = sub

    def _add(self, sub: Subscription) -> None:
        self._dialogs[(sub.dialog.call_id, sub.dialog.local_tag)] = sub
        self._watchers.setdefault((sub.package.name, sub.tenant.id, sub.resource), set()).add(sub)

    def _arm(self, sub: Subscription, expires: int) -> None:
        if sub.timer is not None:
            sub.timer.cancel()
        sub.expires_at = self.loop.time() + expires
        sub.timer = self.loop.call_later(expires, self._expired, sub)

    def _expired(self, sub: Subscription) -> None:
        sub.timer = None
        if not sub.ended:
            self._notify(sub, "terminated;reason=timeout")
            self.remove(sub)

    def remove(self, sub: Subscription) -> None:
        sub.ended = True
        if sub.timer is not None:
            sub.timer.cancel()
            sub.timer = None
        self._dialogs.pop((sub.dialog.call_id, sub.dialog.local_tag), None)
        key = (sub.package.name, sub.tenant.id, sub.resource)
        watchers = self._watchers.get(key)
        if watchers is not None:
            watchers.discard(sub)
            if not watchers:
                del self._watchers[key]

    def close(self) -> None:
        """Shutdown: tell every subscriber (they re-subscribe elsewhere) and forget them."""
        for sub in list(self._dialogs.values()):
            self._notify(sub, "terminated;reason=deactivated")
            self.remove(sub)


# ---------------------------------------------------------------------- busy lamps


class LineStates:
    """Dialogs in progress per (tenant, extension), fed by call state changes; renders the
    ``dialog`` and ``presence`` packages."""

    def __init__(self, server: SubscriptionServer, config: ConfigStore) -> None:
        self.server = server
        self.config = config
        self._lines: dict[tuple[int, str], dict[str, DialogInfo]] = {}
        #: called with (tenant_id, extension, DialogInfo) on every change: the cluster's event
        #: bus publisher hangs here (key f"{tenant_id}:{extension}")
        self.publish: list[Callable[[int, str, DialogInfo], None]] = []
        server.register(_DialogPackage(self))
        server.register(_PresencePackage(self))

    def on_call_state(self, call, state: str) -> None:
        """A service call listener: ``state`` is 'early', 'confirmed' or 'terminated'."""
        tenant = call.tenant
        tenant_id = tenant.id
        caller = call.caller
        callee_ext = getattr(call.plan, "callee_ext", None)
        if caller.extension is not None:
            self.update(tenant_id, caller.number, DialogInfo(
                f"{call.id}-a", call.invite.call_id, "initiator", state, f"sip:{call.plan.callee}@{tenant.domain}"))
        if callee_ext is not None and callee_ext.tenant_id == tenant_id:
            self.update(tenant_id, callee_ext.number, DialogInfo(
                f"{call.id}-b", call.invite.call_id, "recipient", state, f"sip:{caller.number}@{caller.domain}",
                caller.display))

    def update(self, tenant_id: int, ext: str, info: DialogInfo, *, remote: bool = False) -> None:
        """A dialog of the line changed; ``remote``: another node's (from the bus), not republished."""
        key = (tenant_id, ext)
        line = self._lines.get(key)
        if info.state == "terminated":
            if line is None or info.id not in line:
                return
            line[info.id] = info  # reported once as terminated, then gone
            self._changed(tenant_id, ext, info, remote)
            del line[info.id]
            if not line:
                self._lines.pop(key, None)
            return
        if line is None:
            line = self._lines[key] = {}
        elif line.get(info.id) == info:
            return
        line[info.id] = info
        self._changed(tenant_id, ext, info, remote)

    def _changed(self, tenant_id: int, ext: str, info: DialogInfo, remote: bool) -> None:
        self.server.changed("dialog", tenant_id, ext)
        self.server.changed("presence", tenant_id, ext)
        if remote:
            return
        for pub in self.publish:
            try:
                pub(tenant_id, ext, info)
            except Exception:
                log.exception("publishing line state failed")

    def dialogs(self, tenant_id: int, ext: str) -> list[DialogInfo]:
        return list(self._lines.get((tenant_id, ext), {}).values())


class _DialogPackage:
    name = "dialog"
    content_type = DIALOG_INFO
    default_expires = 3600

    def __init__(self, lines: LineStates) -> None:
        self.lines = lines

    async def resource_exists(self, tenant: Tenant, resource: str) -> bool:
        return await self.lines.config.get_extension(tenant.id, resource) is not None

    def body(self, tenant: Tenant, resource: str, version: int) -> bytes:
        return dialog_info_xml(f"sip:{resource}@{tenant.domain}", version, self.lines.dialogs(tenant.id, resource))


class _PresencePackage(_DialogPackage):
    name = "presence"
    content_type = PIDF

    def body(self, tenant: Tenant, resource: str, version: int) -> bytes:
        states = {d.state for d in self.lines.dialogs(tenant.id, resource)}
        note = "On the phone" if "confirmed" in states else "Ringing" if "early" in states else "Available"
        return pidf_xml(f"sip:{resource}@{tenant.domain}", True, note)
