"""Per-tenant limits at the edge: IP/country filter (real MMDB), max calls, daily usage."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet
from prometheus_client import REGISTRY

from sbc.protection import GeoIp, Guard, GuardConfig, PolicyError, TenantPolicy


def blocked(cause: str) -> float:
    return REGISTRY.get_sample_value("hivepbx_sbc_blocked_total", {"cause": cause}) or 0.0


@pytest.fixture(scope="module")
def geoip_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny GeoLite2-Country-shaped database: 192.0.2.0/24 in ES, 198.51.100.0/24 in FR."""
    path = Path(tmp_path_factory.mktemp("geoip")) / "country.mmdb"
    w = MMDBWriter(ip_version=4, database_type="GeoLite2-Country", languages=["en"], description="test")
    w.insert_network(IPSet(["192.0.2.0/24"]), {"country": {"iso_code": "ES", "names": {"en": "Spain"}}})
    w.insert_network(IPSet(["198.51.100.0/24"]), {"country": {"iso_code": "FR", "names": {"en": "France"}}})
    w.to_db_file(str(path))
    return str(path)


@pytest.fixture(scope="module")
def geoip(geoip_path: str) -> GeoIp:
    return GeoIp(geoip_path)


def test_geoip_reads_the_database(geoip: GeoIp) -> None:
    assert geoip.country("192.0.2.77") == "ES"
    assert geoip.country("198.51.100.1") == "FR"
    assert geoip.country("203.0.113.1") is None
    assert geoip.country("not an ip") is None


def test_geoip_bad_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.mmdb"
    bad.write_bytes(b"not a database")
    with pytest.raises(ValueError, match="cannot be read"):
        GeoIp(str(bad))


class Clocks:
    def __init__(self, wall: float) -> None:
        self.mono = 100.0
        self.wall = wall


def guard(geoip: GeoIp | None = None, wall: float = 1_800_000_000.0) -> tuple[Guard, Clocks]:
    c = Clocks(wall)
    return Guard(GuardConfig(), clock=lambda: c.mono, wall_clock=lambda: c.wall, geoip=geoip), c


ES_PHONE = ("192.0.2.10", 5060)
FR_PHONE = ("198.51.100.10", 5060)
US_PHONE = ("203.0.113.10", 5060)


def test_filter_off_allows_everyone() -> None:
    g, _ = guard()
    g.set_tenant_policy("t1", {"filter_by_ip": False})
    assert g.admit_call("t1", "c1", US_PHONE, outbound=True).accepted


def test_filter_on_with_empty_lists_blocks_all_outgoing_calls() -> None:
    # seed: "No outgoing call will be allowed if Filter by IP address is enabled and the list is empty"
    g, _ = guard()
    g.set_tenant_policy("t1", {"filter_by_ip": True})
    before = blocked("ip_filter")
    for i, src in enumerate((ES_PHONE, FR_PHONE, US_PHONE, ("127.0.0.1", 5060))):
        v = g.admit_call("t1", f"c{i}", src, outbound=True)
        assert v.rejected and v.status == 403 and v.cause == "ip_filter"
    assert blocked("ip_filter") == before + 4
    # incoming calls to the tenant are not outgoing calls: the filter does not apply
    assert g.admit_call("t1", "in1", US_PHONE, outbound=False).accepted


def test_filter_by_ranges(geoip: GeoIp) -> None:
    g, _ = guard(geoip)
    g.set_tenant_policy("t1", {"filter_by_ip": True, "allowed_sources": ["203.0.113.0/28", "2001:db8::/32"]})
    assert g.admit_call("t1", "a", ("203.0.113.10", 5060), outbound=True).accepted
    assert g.admit_call("t1", "b", ("2001:db8::5", 5060), outbound=True).accepted
    assert g.admit_call("t1", "c", ("203.0.113.20", 5060), outbound=True).rejected
    assert g.admit_call("t1", "d", ES_PHONE, outbound=True).rejected


def test_filter_by_country(geoip: GeoIp) -> None:
    g, _ = guard(geoip)
    g.set_tenant_policy("t1", {"filter_by_ip": True, "allowed_countries": ["es"], "allowed_sources": ["10.0.0.1"]})
    assert g.admit_call("t1", "a", ES_PHONE, outbound=True).accepted
    assert g.admit_call("t1", "b", ("10.0.0.1", 5060), outbound=True).accepted
    v = g.admit_call("t1", "c", FR_PHONE, outbound=True)
    assert v.rejected and v.cause == "ip_filter"
    assert g.admit_call("t1", "d", US_PHONE, outbound=True).rejected  # unknown country


def test_tenants_do_not_share_policies_or_counters(geoip: GeoIp) -> None:
    g, _ = guard(geoip)
    g.set_tenant_policy("t1", {"filter_by_ip": True, "allowed_countries": ["ES"], "max_calls": 1})
    g.set_tenant_policy("t2", {"filter_by_ip": True, "allowed_countries": ["FR"], "max_calls": 1})
    assert g.admit_call("t1", "a", ES_PHONE, outbound=True).accepted
    assert g.admit_call("t2", "b", ES_PHONE, outbound=True).rejected
    assert g.admit_call("t2", "c", FR_PHONE, outbound=True).accepted  # t1's call does not count
    assert g.admit_call("t1", "d", ES_PHONE, outbound=True).cause == "max_calls"


def test_max_calls_counts_both_directions_and_frees_on_end() -> None:
    g, _ = guard()
    g.set_tenant_policy("t1", {"max_calls": 2})
    assert g.admit_call("t1", "out", US_PHONE, outbound=True).accepted
    assert g.admit_call("t1", "in", US_PHONE, outbound=False).accepted
    v = g.admit_call("t1", "third", US_PHONE, outbound=False)
    assert v.rejected and v.status == 503 and v.cause == "max_calls"
    assert g.admit_call("t1", "out", US_PHONE, outbound=True).accepted  # a retransmission/re-INVITE
    assert g.admit_call("t1", "internal", US_PHONE, outbound=True, external=False).accepted
    g.call_ended("in")
    g.call_ended("in")  # twice is harmless
    assert g.tenants.active_calls("t1") == 1
    assert g.admit_call("t1", "third", US_PHONE, outbound=False).accepted


def test_zero_means_unlimited() -> None:
    g, _ = guard()
    g.set_tenant_policy("t1", {"max_calls": 0, "max_daily_usage": 0})
    for i in range(500):
        assert g.admit_call("t1", f"c{i}", US_PHONE, outbound=True).accepted
        g.call_ended(f"c{i}", usage=1000)


def test_daily_usage_resets_at_midnight_in_tenant_zone() -> None:
    tz = ZoneInfo("America/New_York")
    start = datetime(2026, 3, 7, 18, 0, tzinfo=tz).timestamp()  # 18:00 local = 23:00 UTC
    g, clocks = guard(wall=start)
    g.set_tenant_policy("ny", {"max_daily_usage": 600, "timezone": "America/New_York"})
    g.set_tenant_policy("utc", {"max_daily_usage": 600})
    for tenant in ("ny", "utc"):
        assert g.admit_call(tenant, f"{tenant}1", US_PHONE, outbound=True).accepted
        g.call_ended(f"{tenant}1", usage=600)
        v = g.admit_call(tenant, f"{tenant}2", US_PHONE, outbound=True)
        assert v.rejected and v.status == 403 and v.cause == "daily_usage"
        # incoming calls are not limited by outgoing usage
        assert g.admit_call(tenant, f"{tenant}in", US_PHONE, outbound=False).accepted
        g.call_ended(f"{tenant}in", usage=5000)
    clocks.wall = datetime(2026, 3, 7, 20, 30, tzinfo=tz).timestamp()  # 01:30 UTC: a new day in UTC only
    assert g.admit_call("ny", "ny3", US_PHONE, outbound=True).rejected
    assert g.admit_call("utc", "utc3", US_PHONE, outbound=True).accepted
    g.call_ended("utc3")
    clocks.wall = datetime(2026, 3, 8, 0, 0, 1, tzinfo=tz).timestamp()  # local midnight passed
    assert g.admit_call("ny", "ny4", US_PHONE, outbound=True).accepted
    assert g.tenants.usage_today("ny", clocks.wall) == 0.0


@pytest.mark.parametrize("doc, match", [
    ({"max_calls": -1}, "max_calls"),
    ({"max_calls": "3"}, "max_calls"),
    ({"filter_by_ip": "yes"}, "filter_by_ip"),
    ({"allowed_sources": ["10.0.0.300"]}, "10.0.0.300"),
    ({"allowed_sources": "10.0.0.0/8"}, "allowed_sources"),
    ({"allowed_countries": ["Spain"]}, "Spain"),
    ({"max_daily_usage": -5}, "max_daily_usage"),
    ({"timezone": "Mars/Olympus"}, "Mars/Olympus"),
    ({"colour": "red"}, "colour"),
    ({"media_relay_set": "eu"}, "media_relay_set"),  # the media anchor's business ([media] tenants)
])
def test_bad_policy_documents_say_what_is_wrong(doc: dict, match: str) -> None:
    with pytest.raises(PolicyError, match=match):
        TenantPolicy.from_dict(doc)
    g, _ = guard()
    with pytest.raises(ValueError):
        g.set_tenant_policy("t1", doc)


def test_policies_and_geoip_from_the_config_file(geoip_path: str) -> None:
    # the [protection] table as tomllib gives it: lists, ints where floats are meant, nested tables
    table = {"window": 1, "trusted": ["10.0.0.0/8"], "geoip_database": geoip_path,
             "tenants": {"acme": {"filter_by_ip": True, "allowed_countries": ["ES"], "max_calls": 1}}}
    g = Guard(GuardConfig(**table))
    assert g.config.window == 1.0 and g.config.trusted == ("10.0.0.0/8",)
    assert g.admit_call("acme", "a", ES_PHONE, outbound=True).accepted
    assert g.admit_call("acme", "b", ES_PHONE, outbound=True).cause == "max_calls"
    assert g.admit_call("acme", "c", FR_PHONE, outbound=True).cause == "ip_filter"
    assert g.admit_call("other", "d", FR_PHONE, outbound=True).accepted
    with pytest.raises(PolicyError, match="tenants.acme: max_calls"):
        GuardConfig(tenants={"acme": {"max_calls": -1}})
    with pytest.raises(ValueError, match="cannot be read"):
        Guard(GuardConfig(geoip_database="/nonexistent/country.mmdb"))
    with pytest.raises(ValueError, match="density"):
        GuardConfig(**{"density": 2.5})


def _invite(call_id: str):
    from node.sip.message import Request

    return Request("INVITE", "sip:0034911234567@alpha.example", [
        ("Via", "SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK-x"), ("From", "<sip:1001@alpha.example>;tag=a"),
        ("To", "<sip:0034911234567@alpha.example>"), ("Call-ID", call_id), ("CSeq", "1 INVITE")])


def test_usage_is_answered_time_seen_in_the_2xx() -> None:
    from node.sip.message import make_response

    g, clocks = guard()
    g.set_tenant_policy("t1", {"max_daily_usage": 100})
    inv = _invite("long")
    assert g.admit_call("t1", "long", US_PHONE, outbound=True).accepted
    clocks.wall += 30  # ringing is not usage
    g.observe_response(inv, make_response(inv, 200, to_tag="b"), US_PHONE)
    clocks.wall += 60
    g.dialog_ended("long")
    assert g.tenants.usage_today("t1", clocks.wall) == 60.0
    # an unanswered call costs nothing
    assert g.admit_call("t1", "short", US_PHONE, outbound=True).accepted
    clocks.wall += 20
    g.call_ended("short")
    assert g.tenants.usage_today("t1", clocks.wall) == 60.0
    inv2 = _invite("second")
    assert g.admit_call("t1", "second", US_PHONE, outbound=True).accepted
    g.observe_response(inv2, make_response(inv2, 200, to_tag="b"), US_PHONE)
    clocks.wall += 45
    g.call_ended("second")
    assert g.admit_call("t1", "third", US_PHONE, outbound=True).cause == "daily_usage"


def test_a_call_never_ended_stops_holding_a_slot() -> None:
    c = Clocks(1_800_000_000.0)
    g = Guard(GuardConfig(max_call_age=3600), clock=lambda: c.mono, wall_clock=lambda: c.wall)
    g.set_tenant_policy("t1", {"max_calls": 2})
    assert g.admit_call("t1", "lost-bye", US_PHONE, outbound=True).accepted
    c.wall += 1800
    assert g.admit_call("t1", "b", US_PHONE, outbound=False).accepted
    assert g.admit_call("t1", "c", US_PHONE, outbound=False).cause == "max_calls"
    c.wall += 1801  # the first call is older than max_call_age: its slot is free again
    assert g.admit_call("t1", "c", US_PHONE, outbound=False).accepted
    assert g.tenants.active_calls("t1") == 2
    assert not g.tenants.admitted("lost-bye")
