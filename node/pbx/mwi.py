"""Message waiting indication: the ``message-summary`` event package (RFC 3842) on the
node's SubscriptionServer (node/pbx/subscriptions.py). A phone subscribes to its own
mailbox (sip:1001@tenant-domain; only the mailbox's extension may watch it) and gets a
NOTIFY with the counts now and on every change (a message left, listened to, deleted).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from node.model import Tenant

if TYPE_CHECKING:
    from node.pbx.voicemail import VoicemailService

CONTENT_TYPE = "application/simple-message-summary"


def message_summary(new: int, old: int, account: str = "", urgent_new: int = 0, urgent_old: int = 0) -> bytes:
    """An RFC 3842 body: Messages-Waiting, Message-Account, Voice-Message new/old (urgent)."""
    lines = [f"Messages-Waiting: {'yes' if new else 'no'}"]
    if account:
        lines.append(f"Message-Account: {account}")
    lines.append(f"Voice-Message: {new}/{old} ({urgent_new}/{urgent_old})")
    return ("\r\n".join(lines) + "\r\n").encode()


def parse_summary(body: str) -> dict[str, str]:
    """Header-like lines of a message-summary body (tests, tools)."""
    out = {}
    for line in body.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            out[k.strip().lower()] = v.strip()
    return out


class MessageSummaryPackage:
    name = "message-summary"
    content_type = CONTENT_TYPE
    default_expires = 3600

    def __init__(self, vm: "VoicemailService") -> None:
        self.vm = vm

    async def resource_exists(self, tenant: Tenant, resource: str) -> bool:
        from node.pbx import voicemail

        if not resource.isdigit() or await voicemail.load(self.vm.config, tenant.id, resource) is None:
            return False
        self.vm.store.counts(tenant.id, resource)  # warm the cache ``body`` reads
        return True

    def authorize(self, tenant: Tenant, subscriber: str, resource: str) -> bool:
        return subscriber == resource

    def body(self, tenant: Tenant, resource: str, version: int) -> bytes:
        new, old = self.vm.store.counts(tenant.id, resource)
        return message_summary(new, old, f"sip:{resource}@{tenant.domain}")
