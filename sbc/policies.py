"""Where the Guard's per-tenant edge policies come from.

* The SBC's config file (``[protection.tenants."domain"]``): loaded by the Guard at start.
* The cluster's configuration, with ``[etcd]``: each tenant's ``sbc_policy`` object named
  ``edge`` (``hivepbx edge-policy set``), stored like every other per-tenant setting
  (node.ports.ConfigStore feature objects). The etcd ConfigStore keeps its view current
  with a watch; ``ClusterPolicies`` looks at the view's revision every ``interval`` and, when
  it moved, installs what changed: running SBCs follow a change within a second, no restart.

A cluster policy replaces the file's for that tenant; removing it brings the file's back.
The SBC knows a request's tenant by its SIP domain (sbc/proxy.py ``tenant_of``: the From
domain, the To domain of a REGISTER, a carrier's configured tenant), so policies are
installed under the tenant's domain. A document that does not validate (written around the
CLI) is logged and ignored: the tenant keeps the policy it had.

The etcd store is opened by module name (like sbc/membership.py), so the SBC depends on
the cluster package only when ``[etcd]`` is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging

from observability import logging as olog
from sbc.protection import metrics as PM
from sbc.protection.tenants import POLICY_KIND, POLICY_NAME, PolicyError, TenantPolicy

log = logging.getLogger("hivepbx.sbc")


class ClusterPolicies:
    """Keeps ``guard``'s tenant policies equal to the ConfigStore's ``sbc_policy`` objects
    (over the file's ``base`` ones). ``store``: a node.ports.ConfigStore; its ``revision``
    (when it has one) tells whether anything changed since the last look."""

    def __init__(self, store, guard, base: dict | None = None, interval: float = 0.5) -> None:
        self.store = store
        self.guard = guard
        self.base = {t: TenantPolicy.from_dict(d) for t, d in (base or {}).items()}
        self.interval = interval
        #: domain -> policy installed from the cluster
        self.installed: dict[str, TenantPolicy] = {}
        self._seen_revision: int | None = None
        self._bad: dict[str, str] = {}
        self._task: asyncio.Task | None = None

    async def load(self) -> int:
        """Read every tenant's policy and install what changed; returns how many changed."""
        self._seen_revision = getattr(self.store, "revision", None)
        want: dict[str, TenantPolicy] = {}
        bad: dict[str, str] = {}
        for t in await self.store.list_tenants():
            doc = (await self.store.list_objects(t.id, POLICY_KIND)).get(POLICY_NAME)
            if doc is None:
                continue
            if "timezone" not in doc and t.timezone:
                doc = {**doc, "timezone": t.timezone}  # the tenant's own day, unless the policy says
            try:
                want[t.domain] = TenantPolicy.from_dict(doc)
            except PolicyError as e:
                bad[t.domain] = str(e)
                if t.domain in self.installed:
                    want[t.domain] = self.installed[t.domain]
        for domain, why in bad.items():
            if self._bad.get(domain) != why:
                token = olog.tenant_var.set(domain)  # the log line names the tenant
                try:
                    log.error("tenant %s: its edge policy in the cluster is invalid (%s): keeping the previous one",
                              domain, why)
                finally:
                    olog.tenant_var.reset(token)
                PM.POLICY_LOADS.labels("invalid").inc()
        self._bad = bad
        changed = 0
        for domain, policy in want.items():
            if self.installed.get(domain) != policy:
                self.guard.set_tenant_policy(domain, policy)
                changed += 1
        for domain in set(self.installed) - set(want):
            self.guard.set_tenant_policy(domain, self.base.get(domain))
            changed += 1
        self.installed = want
        PM.POLICIES.set(len(set(want) | set(self.base)))
        if changed:
            PM.POLICY_LOADS.labels("changed").inc()
            log.info("edge policies: %d tenant(s) changed, %d from the cluster", changed, len(want))
        return changed

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            rev = getattr(self.store, "revision", None)
            if rev is not None and rev == self._seen_revision:
                continue
            try:
                await self.load()
            except Exception:
                PM.POLICY_LOADS.labels("failed").inc()
                log.exception("loading the tenants' edge policies failed; retrying")
                self._seen_revision = None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


async def open_etcd_config(cfg):
    """The cluster's ConfigStore on etcd, read-only for the SBC (a watched in-memory view of
    the configuration prefix); the caller closes it with ``await close()``."""
    etcd = importlib.import_module("cluster.etcd")

    async def build(client):
        store = etcd.EtcdConfigStore(client, etcd.Keys(cfg.etcd_prefix))
        await store.start()
        return store, store.close

    return await etcd.client.open_with_client(list(cfg.etcd_endpoints), build)
