"""`hivepbx edge-policy` (validation by the SBC's rules, `set` changes only what it is given)
and sbc/policies.py's ClusterPolicies (cluster over file, invalid documents ignored, removal
restores the file's policy) against a ConfigStore."""

from __future__ import annotations

import io
import json
from pathlib import Path

from node.cli import main
from node.model import Tenant
from sbc.policies import ClusterPolicies
from sbc.protection import POLICY_KIND, POLICY_NAME, Guard


def hp(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_sets_shows_and_clears_with_the_sbcs_validation(tmp_path: Path) -> None:
    d = ("--data-dir", str(tmp_path))
    assert hp("tenant", "add", "acme", "acme.example", "--timezone", "Europe/Madrid", *d)[0] == 0
    code, out, err = hp("edge-policy", "set", "acme", "--max-calls", "3", "--filter-by-ip", "--allow", "192.0.2.0/24", *d)
    assert code == 0, err
    code, out, err = hp("edge-policy", "set", "acme.example", "--countries", "es,pt", "--max-daily-usage", "3600", *d)
    assert code == 0, err
    code, out, _ = hp("edge-policy", "show", "acme", "--json", *d)
    policy = json.loads(out)["policy"]
    assert policy == {"max_calls": 3, "filter_by_ip": True, "allowed_sources": ["192.0.2.0/24"],
                      "allowed_countries": ["ES", "PT"], "max_daily_usage": 3600.0, "timezone": "Europe/Madrid"}
    for args, says in [
        (("--allow", "192.0.2.0/24,not-an-ip"), "'not-an-ip' is not an IP address or CIDR range"),
        (("--countries", "Spain"), "'SPAIN' is not an ISO 3166 alpha-2 code"),
        (("--max-calls", "-2"), "max_calls must be a whole number >= 0"),
        (("--max-daily-usage", "-1"), "max_daily_usage must be a number >= 0"),
        (("--timezone", "Mars/Olympus"), "'Mars/Olympus' is not an IANA time zone"),
    ]:
        code, out, err = hp("edge-policy", "set", "acme", *args, *d)
        assert code == 2 and says in err, (args, err)
    assert json.loads(hp("edge-policy", "show", "acme", "--json", *d)[1])["policy"] == policy  # unchanged
    code, out, err = hp("edge-policy", "set", "nobody", "--max-calls", "1", *d)
    assert code == 2 and "no tenant 'nobody'" in err
    assert hp("edge-policy", "set", "acme", "--allow", "", "--no-filter-by-ip", *d)[0] == 0
    policy = json.loads(hp("edge-policy", "show", "acme", "--json", *d)[1])["policy"]
    assert policy["allowed_sources"] == [] and policy["filter_by_ip"] is False
    code, out, _ = hp("edge-policy", "clear", "acme", *d)
    assert code == 0 and "removed" in out
    assert json.loads(hp("edge-policy", "show", "acme", "--json", *d)[1])["policy"] is None


class FakeStore:
    """The ConfigStore calls ClusterPolicies makes, with a revision like the etcd view's."""

    def __init__(self) -> None:
        self.tenants = [Tenant(1, "acme", "acme.example", timezone="America/New_York"), Tenant(2, "beta", "beta.example")]
        self.objects: dict[int, dict] = {}
        self.revision = 1

    def put(self, tid: int, doc: dict | None) -> None:
        if doc is None:
            self.objects.pop(tid, None)
        else:
            self.objects[tid] = doc
        self.revision += 1

    async def list_tenants(self):
        return list(self.tenants)

    async def list_objects(self, tid: int, kind: str) -> dict:
        assert kind == POLICY_KIND
        return {POLICY_NAME: self.objects[tid]} if tid in self.objects else {}


async def test_cluster_policies_over_the_file_ones() -> None:
    guard = Guard()
    base = {"acme.example": {"max_calls": 9}}
    guard.set_tenant_policy("acme.example", base["acme.example"])
    store = FakeStore()
    feed = ClusterPolicies(store, guard, base)
    assert await feed.load() == 0
    assert guard.tenants.policy("acme.example").max_calls == 9

    store.put(1, {"max_calls": 2})
    assert await feed.load() == 1
    p = guard.tenants.policy("acme.example")
    assert p.max_calls == 2 and p.timezone == "America/New_York"  # the tenant's day by default
    assert guard.tenants.policy("beta.example").max_calls == 0  # one tenant's policy is its own

    store.put(1, {"max_calls": "many"})  # written around the CLI: ignored, the last good one stays
    assert await feed.load() == 0
    assert guard.tenants.policy("acme.example").max_calls == 2

    store.put(2, {"filter_by_ip": True})
    assert await feed.load() == 1
    assert guard.tenants.policy("beta.example").filter_by_ip

    store.put(1, None)  # removed from the cluster: the file's policy is back
    store.put(2, None)  # and a tenant without a file policy has none
    assert await feed.load() == 2
    assert guard.tenants.policy("acme.example").max_calls == 9
    assert not guard.tenants.policy("beta.example").filter_by_ip
