"""Paging / intercom: a feature code (action ``page``) then an extension or a page group
(kind ``page_group``, ``{"members": ["1002", "1003"]}``) calls the phones with the headers
that make them answer by themselves, on speaker:

    Call-Info: <sip:DOMAIN>;answer-after=0            (RFC 7462 / Polycom, Yealink, Snom, baresip)
    Alert-Info: <http://127.0.0.1>;info=alert-autoanswer  (Cisco/Grandstream style)

A page goes straight to the phones: no forwarding, hunting or voicemail, and members on
do-not-disturb are skipped. A page group rings every member's phones at once; the first
phone that answers gets the page (the B2BUA bridges two parties: a one-to-many page with
one-way audio to every member would need the media engine's mixer and is not done).
"""

from __future__ import annotations

from node.config_rules import ConfigError
from node.model import Extension, Tenant
from node.pbx import forwarding, member_groups
from node.pbx.routing import RoutePlan, extension_targets
from node.ports import ConfigStore, LocationStore

KIND = "page_group"
MAX_MEMBERS = 50


def auto_answer_headers(domain: str) -> list[tuple[str, str]]:
    return [
        ("Call-Info", f"<sip:{domain}>;answer-after=0"),
        ("Alert-Info", "<http://127.0.0.1>;info=alert-autoanswer"),
    ]


def validate(doc: object) -> dict:
    return member_groups.validate(doc, "page group", MAX_MEMBERS)


async def save(config: ConfigStore, tenant_id: int, name: str, doc: object) -> dict:
    if not isinstance(name, str) or not name.isdigit() or not 2 <= len(name) <= 10:
        raise ConfigError(f"a page group is named by a number (2-10 digits), not {name!r}")
    out = validate(doc)
    await member_groups.check_members(config, tenant_id, out["members"], "page group")
    await config.put_object(tenant_id, KIND, name, out)
    return out


async def plan(tenant: Tenant, pager: Extension, target: str, config: ConfigStore,
               locations: LocationStore) -> RoutePlan:
    """The plan of a page from ``pager`` to an extension or a page group of its tenant."""
    out = RoutePlan(tenant, "internal", target)
    out.extra_headers = auto_answer_headers(tenant.domain)
    group = await config.get_object(tenant.id, KIND, target)
    if group is not None:
        try:
            members = validate(group)["members"]
        except ConfigError:
            out.fail_status, out.fail_reason = 500, f"Server Internal Error (page group {target} misconfigured)"
            return out
    elif await config.get_extension(tenant.id, target) is not None:
        members = [target]
    else:
        out.fail_status, out.fail_reason = 404, f"Not Found (no extension or page group {target})"
        return out
    targets = []
    for number in members:
        if number == pager.number or (await forwarding.load(config, tenant.id, number)).get("dnd"):
            continue
        ext = await config.get_extension(tenant.id, number)
        if ext is not None:
            targets += await extension_targets(tenant, ext, tenant.domain, locations)
            if len(members) == 1:
                out.callee_ext = ext
    if not targets:
        out.fail_status, out.fail_reason = 480, "Temporarily Unavailable (nobody to page)"
    else:
        out.attempts.append(targets)
    return out
