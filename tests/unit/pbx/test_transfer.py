"""Blind transfer: what a Refer-To may name, tenant isolation, and who may transfer."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from node.model import Extension, Tenant
from node.pbx.transfer import ReferError, parse_refer_to, same_tenant, transferor_extension

ALPHA = Tenant(id=1, name="alpha", domain="alpha.example")


def test_refer_to_names_number_and_host():
    t = parse_refer_to("<sip:1003@alpha.example>")
    assert (t.number, t.host, t.replaces) == ("1003", "alpha.example", "")
    t = parse_refer_to("sip:%2B4930123@127.0.0.1:5060")
    assert (t.number, t.host) == ("+4930123", "127.0.0.1")


def test_refer_to_with_replaces_is_unescaped():
    t = parse_refer_to("<sip:1003@alpha.example?Replaces=abc%40host%3Bto-tag%3D1%3Bfrom-tag%3D2>")
    assert t.replaces == "abc@host;to-tag=1;from-tag=2"


@pytest.mark.parametrize("value, why", [
    (None, "missing"), ("", "missing"), ("<sip:alpha.example>", "no number"),
    ("<tel:1003>", "SIP URI"), ("<sip:1003@", "unreadable"),
])
def test_bad_refer_to_is_400_with_a_reason(value, why):
    with pytest.raises(ReferError) as e:
        parse_refer_to(value)
    assert e.value.status == 400 and why in e.value.reason


def test_refer_to_must_stay_in_the_tenant():
    assert same_tenant(ALPHA, "alpha.example") and same_tenant(ALPHA, "ALPHA.example")
    assert same_tenant(ALPHA, "127.0.0.1") and same_tenant(ALPHA, "::1")
    assert not same_tenant(ALPHA, "beta.example")
    assert not same_tenant(ALPHA, "alpha.example.evil")


def _ext(tenant_id, number):
    return Extension(id=1, tenant_id=tenant_id, number=number, password="x")


def test_only_extensions_of_the_tenant_transfer():
    alice, bob = _ext(1, "1001"), _ext(1, "1002")
    leg = SimpleNamespace(target=SimpleNamespace(kind="extension"))
    call = SimpleNamespace(caller=SimpleNamespace(extension=alice), tenant=ALPHA,
                           plan=SimpleNamespace(callee_ext=bob), answered_leg=leg)
    assert transferor_extension(call, "a") is alice
    assert transferor_extension(call, "b") is bob
    leg.target.kind = "trunk"  # the callee is a carrier, not bob's phone
    assert transferor_extension(call, "b") is None
    call.plan.callee_ext = _ext(2, "1002")  # another tenant's extension
    leg.target.kind = "extension"
    assert transferor_extension(call, "b") is None
    call.caller.extension = None  # an inbound caller from a trunk
    assert transferor_extension(call, "a") is None


def test_feature_metrics_have_bounded_labels():
    from prometheus_client import REGISTRY

    from node.pbx import outgoing

    before = REGISTRY.get_sample_value("hivepbx_call_features_total", {"feature": "other", "outcome": "done"}) or 0
    outgoing.feature_done("tenant-chosen-name", "done")
    assert REGISTRY.get_sample_value("hivepbx_call_features_total", {"feature": "other", "outcome": "done"}) == before + 1
