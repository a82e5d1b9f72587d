"""Setup the feature tests of node/pbx share: two tenants (alpha, beta) on one store so each
test can prove one cannot reach the other, registrations, and dialling through the plan."""

from __future__ import annotations

import time

from node.model import Binding
from node.pbx.dialplan import FeatureState, plan_outgoing


async def alpha_beta(store, alpha_exts, beta_exts=None):
    """Tenants alpha (alpha.example) and beta (beta.example) with these extensions (beta gets
    alpha's numbers when ``beta_exts`` is None); each extension's password is secret-NUMBER."""
    c = store.config
    a = await c.create_tenant("alpha", "alpha.example")
    b = await c.create_tenant("beta", "beta.example")
    for t, numbers in ((a, alpha_exts), (b, alpha_exts if beta_exts is None else beta_exts)):
        for n in numbers:
            await c.create_extension(t.id, n, f"secret-{n}")
    return a, b


def binding(tenant_id, ext, port):
    """A UDP registration of ``ext`` from 127.0.0.1:``port``, valid for a minute."""
    return Binding(
        tenant_id=tenant_id, extension=ext, contact=f"sip:{ext}@127.0.0.1:{port}", source_host="127.0.0.1",
        source_port=port, transport="udp", expires_at=time.time() + 60, call_id=f"r{port}", cseq=1,
    )


async def dial(store, tenant, dialled, ext="1001", state=None):
    """The plan for ``ext`` of ``tenant`` dialling ``dialled`` (no feature state unless given)."""
    caller = await store.config.get_extension(tenant.id, ext)
    state = FeatureState() if state is None else state
    return await plan_outgoing(tenant, caller, dialled, store.config, store.locations, state)


class FakeSubscriptionServer:
    """Just what LineStates needs of a SubscriptionServer: registration, and the change calls
    it makes (recorded as (package, tenant, resource))."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, int, str]] = []

    def register(self, package) -> None:
        pass

    def changed(self, package: str, tenant_id: int, resource: str) -> None:
        self.changes.append((package, tenant_id, resource))
