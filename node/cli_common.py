"""What the feature command modules (node/cli_ivr.py, cli_media.py, cli_routing.py,
cli_voicemail.py) do alike with a tenant's feature objects, written once so each answers a
missing object and a DID the same way."""

from __future__ import annotations

from node.cli import CliError
from node.model import Tenant


async def route_dids(backend, tenant: Tenant, kind: str, number: str, numbers: list[str]) -> tuple[list[str], str]:
    """Create a DID to the ``kind`` object at ``number`` for each of ``numbers``. Returns the
    stored numbers and a '; DID ... lead to it' suffix for the done message ('' for none)."""
    dids = [(await backend.config.create_did(tenant.id, n, kind, number)).number for n in numbers]
    return dids, f"; DID {', '.join(dids)} lead to it" if dids else ""


async def get_object(backend, tenant: Tenant, kind: str, name: str, missing: str) -> dict:
    """The object, or CliError(``missing``) when the tenant has none of that name."""
    doc = await backend.config.get_object(tenant.id, kind, name)
    if doc is None:
        raise CliError(missing)
    return doc


async def delete_object(backend, tenant: Tenant, kind: str, name: str, missing: str) -> None:
    """Delete the object, or CliError(``missing``) when the tenant has none of that name."""
    if not await backend.config.delete_object(tenant.id, kind, name):
        raise CliError(missing)
