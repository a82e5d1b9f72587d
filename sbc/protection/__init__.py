"""Protection at the SBC's public edge (sans-I/O; see guard.py for the why).

Seam with the SBC pipeline:

* ``Guard.check_request(msg, source) -> Verdict`` for every message received from outside
  (``source``: the Flow or ``(ip, port)``), before anything else; parse errors too, as
  ``check_request(error_or_None, source)`` or ``unparseable(source)``; act on ``verdict.action``: ``accept`` go on,
  ``drop`` send nothing, ``reject`` answer ``status``/``reason``/``headers`` and stop.
* ``Guard.observe_response(request, response, source)`` with a node's final response to an
  INVITE/REGISTER that came from ``source`` (counts authentication failures).
* ``Guard.admit_call(tenant, call_id, source, outbound=, external=) -> Verdict`` once the
  tenant of an initial INVITE is known; ``Guard.call_ended(call_id, usage)`` (alias
  ``dialog_ended``) when it ends, however it ends.
* ``Guard.set_tenant_policy(tenant, dict)`` with the tenant's ``sbc_policy`` document.
"""

from sbc.protection.geoip import GeoIp
from sbc.protection.guard import SCANNER_SIGNATURES, Guard, GuardConfig
from sbc.protection.tenants import POLICY_KIND, POLICY_NAME, PolicyError, TenantPolicy
from sbc.protection.verdict import ACCEPT, CAUSES, Verdict

__all__ = [
    "Guard", "GuardConfig", "Verdict", "ACCEPT", "CAUSES", "SCANNER_SIGNATURES",
    "TenantPolicy", "PolicyError", "POLICY_KIND", "POLICY_NAME", "GeoIp",
]
