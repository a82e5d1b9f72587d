"""The demo tenant ``hivepbx run --demo`` creates, so a first call needs no configuration."""

from __future__ import annotations

import secrets

from node.ports import ConfigStore

DEMO_TENANT = "demo"
DEMO_DOMAIN = "demo.hivepbx.local"
DEMO_EXTENSIONS = ("1001", "1002")


async def provision_demo(config: ConfigStore) -> dict:
    """Create what is missing of the demo tenant and its extensions (existing ones are kept,
    passwords included) and return what to show the user::

        {"tenant": "demo", "tenant_id": 1, "domain": "demo.hivepbx.local", "created": True,
         "extensions": [{"number": "1001", "password": "..."}, ...]}
    """
    created = False
    tenant = await config.tenant_by_domain(DEMO_DOMAIN)
    if tenant is None:
        tenant = await config.create_tenant(DEMO_TENANT, DEMO_DOMAIN)
        created = True
    extensions = []
    for number in DEMO_EXTENSIONS:
        ext = await config.get_extension(tenant.id, number)
        if ext is None:
            ext = await config.create_extension(
                tenant.id, number, secrets.token_urlsafe(12), display_name=f"Demo {number}"
            )
            created = True
        extensions.append({"number": ext.number, "password": ext.password})
    return {
        "tenant": tenant.name,
        "tenant_id": tenant.id,
        "domain": tenant.domain,
        "created": created,
        "extensions": extensions,
    }
