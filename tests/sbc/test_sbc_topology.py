"""Topology hiding rules (sbc/topology.py) and the SBC configuration (sbc/config.py, sbc/cli.py)."""

from __future__ import annotations

import pytest

from node.sip.flow import Flow
from node.sip.message import Request, Response
from node.sip.parser import parse_datagram
from sbc import topology as T
from sbc.cli import config_from_args, build_parser, main
from sbc.config import SbcConfigError, from_dict, load

SEALER = T.Sealer(b"0123456789abcdef0123")
PHONE = Flow("udp", ("203.0.113.7", 40123), ("0.0.0.0", 5060))


def test_phone_token_round_trips_and_is_deterministic_and_signed():
    tok = T.phone_token(SEALER, PHONE, "sip:1002@192.168.1.5:5060;ob")
    assert tok == T.phone_token(SEALER, PHONE, "sip:1002@192.168.1.5:5060;ob")  # a refresh = same binding
    back = T.read_phone_token(SEALER, tok)
    assert back == T.PhoneTarget(PHONE, "sip:1002@192.168.1.5:5060;ob")
    body, mac = tok.split(".")
    forged = T._b64(T._unb64(body).replace(b"203.0.113.7", b"198.51.100.9")) + "." + mac
    assert T.read_phone_token(SEALER, forged) is None
    assert T.read_phone_token(T.Sealer(b"another-secret-key!!"), tok) is None
    assert T.read_phone_token(SEALER, "garbage") is None


def test_tokens_read_again_come_from_the_memo_and_forgeries_are_never_remembered(monkeypatch):
    sealer = T.Sealer(b"0123456789abcdef0123")
    ptok = T.phone_token(sealer, PHONE, "sip:1002@192.168.1.5")
    ntok = T.node_token(sealer, "node-a", "sip:1001@10.1.2.3:5070")
    first = T.read_phone_token(sealer, ptok), T.read_node_token(sealer, ntok)
    monkeypatch.setattr(sealer, "unsign", lambda t: pytest.fail("phone token checked again"))
    monkeypatch.setattr(sealer, "unseal", lambda t: pytest.fail("node token opened again"))
    again = T.read_phone_token(sealer, ptok), T.read_node_token(sealer, ntok)
    assert again[0] is first[0] and again[1] is first[1] and first[0].flow == PHONE
    monkeypatch.undo()
    body, mac = ptok.split(".")
    forged = T._b64(T._unb64(body).replace(b"203.0.113.7", b"198.51.100.9")) + "." + mac
    assert T.read_phone_token(sealer, forged) is None and T.read_node_token(sealer, ntok[:-2]) is None
    assert forged not in sealer._phone_read and ntok[:-2] not in sealer._node_read
    monkeypatch.setattr(T, "READ_CACHE", 3)
    for i in range(7):
        T.read_node_token(sealer, T.node_token(sealer, "node-a", f"sip:{i}@10.1.2.3"))
    assert 1 <= len(sealer._node_read) <= 3


def test_node_token_is_opaque_and_authenticated():
    tok = T.node_token(SEALER, "node-a", "sip:1001@10.1.2.3:5070")
    assert "10.1.2.3" not in tok and "node-a" not in tok
    assert "10.1.2.3".encode() not in T._unb64(tok)  # encrypted, not just encoded
    assert T.read_node_token(SEALER, tok) == T.NodeContact("node-a", "sip:1001@10.1.2.3:5070")
    raw = bytearray(T._unb64(tok))
    raw[-1] ^= 1
    assert T.read_node_token(SEALER, T._b64(bytes(raw))) is None
    assert T.read_node_token(SEALER, "") is None
    # a URI parameter value: only URI-safe characters
    assert all(c.isalnum() or c in "-_" for c in tok)


def test_token_of_finds_our_parameter_only():
    assert T.token_of("sip:1@h:5;sbcn=abc-_;transport=tcp", "sbcn") == "abc-_"
    assert T.token_of("sip:1@h:5;sbcn=abc>", "sbcn") == "abc"
    assert T.token_of("sip:1@h:5;xsbcn=abc", "sbcn") is None
    assert T.token_of("sip:1@h", "sbcf") is None


INVITE_FROM_NODE = (
    b"INVITE sip:1002@127.0.0.4:5070;sbcf=x SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.11:5060;branch=z9hG4bKnode1;rport\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.99:5060;branch=z9hG4bKinner\r\n"
    b"Record-Route: <sip:10.0.0.11;lr>\r\n"
    b"Route: <sip:10.0.0.4;lr>\r\n"
    b"Max-Forwards: 69\r\n"
    b"From: <sip:1001@alpha.example>;tag=a\r\n"
    b"To: <sip:1002@alpha.example>\r\n"
    b"Call-ID: c1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:1001@10.0.0.11:5060>;+sip.instance=\"<urn:x>\"\r\n"
    b"X-Hive-Node: a\r\n"
    b"x-hive-trace: 1\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_forwarded_request_carries_nothing_of_the_inside():
    req = parse_datagram(INVITE_FROM_NODE)

    def contact(value):
        def one(na):
            uri = T.masquerade_uri(na.uri, "198.51.100.1", 5060, "udp", T.NODE_PARAM,
                                   T.node_token(SEALER, "a", str(na.uri)))
            return type(na)(uri, na.display, na.params)
        return T.rewrite_contacts(value, one)

    out = T.forward_request(req, "sip:1002@192.168.1.5", "SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKsbc;rport",
                            contact=contact)
    wire = out.to_bytes()
    for secret in (b"10.0.0.", b"X-Hive", b"x-hive", b"Record-Route", b"Route:"):
        assert secret not in wire, wire
    assert out.get_all("Via") == ["SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKsbc;rport"]
    assert out.get("Max-Forwards") == "68"
    assert out.uri_text == "sip:1002@192.168.1.5"
    assert '+sip.instance="<urn:x>"' in out.get("Contact")  # header parameters survive
    back = T.read_node_token(SEALER, T.token_of(out.get("Contact"), T.NODE_PARAM))
    assert back.uri == "sip:1001@10.0.0.11:5060"


def test_forwarded_response_gets_its_requests_vias_back_and_loses_the_rest():
    req = parse_datagram(
        b"BYE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.7:5060;branch=z9hG4bKp;rport=40123;received=203.0.113.7\r\n"
        b"From: <sip:a@d>;tag=1\r\nTo: <sip:b@d>;tag=2\r\nCall-ID: c\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    )
    resp = parse_datagram(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.4:5070;branch=z9hG4bKsbc\r\n"
        b"Via: SIP/2.0/UDP 203.0.113.7:5060;branch=z9hG4bKp;rport=40123;received=203.0.113.7\r\n"
        b"Record-Route: <sip:10.0.0.11;lr>\r\nFrom: <sip:a@d>;tag=1\r\nTo: <sip:b@d>;tag=2\r\nCall-ID: c\r\n"
        b"CSeq: 2 BYE\r\nX-Hive-Node: a\r\nContent-Length: 0\r\n\r\n"
    )
    out = T.forward_response(resp, T.via_headers(req), contact=None)
    assert isinstance(out, Response) and out.status == 200
    assert out.get_all("Via") == req.get_all("Via")
    assert b"10.0.0." not in out.to_bytes() and b"X-Hive" not in out.to_bytes()


def test_edge_headers_fast_path_copies_what_copy_headers_copies():
    """_edge_headers copies known names by one set test: the same headers, in the same order,
    as the reference rules of copy_headers (Max-Forwards aside, which it decrements)."""
    from node.sip.headers import KNOWN_NAMES

    headers = [("Via", "SIP/2.0/UDP 10.0.0.4;branch=z9hG4bKx")]
    headers += [(n, f"v{i}") for i, n in enumerate(sorted(KNOWN_NAMES)) if n not in ("Via", "Max-Forwards")]
    headers += [("X-Hive-Node", "a"), ("x-hive-trace", "1"), ("X-HIVE-Z", "2"), ("X-Other", "keep"),
                ("x-custom", "keep too"), ("Max-Forwards", "9")]
    req = Request("INVITE", "sip:a@b", headers)
    seen = []
    out = T._edge_headers(req, [("Via", "ours")], lambda v: seen.append(v) or "<sip:x@y>", True)
    ref = T.copy_headers(req, contact=lambda v: "<sip:x@y>")
    assert [h for h in out if h[0] not in ("Via", "Max-Forwards")] == [h for h in ref if h[0] != "Max-Forwards"]
    assert out[0] == ("Via", "ours") and ("Max-Forwards", "8") in out and seen == [dict(headers)["Contact"]]
    names = {n.lower() for n, _ in out}
    assert not {"route", "record-route", "content-length"} & names
    assert not [n for n in names if n.startswith("x-hive-")] and {"x-other", "x-custom"} <= names


def test_register_star_contact_is_left_alone():
    assert T.rewrite_contacts("*", lambda na: None) == "*"
    assert T.rewrite_contacts("<sip:a@h>, <sip:b@h>;expires=5", lambda na: na if na.uri.user == "b" else None) \
        == "<sip:b@h>;expires=5"


# ------------------------------------------------------------------ configuration

TOML = """
[sbc]
listen = ["udp:0.0.0.0:5060", "tcp:[::]:5060"]
internal_listen = ["udp:10.0.0.5:5070"]
advertise = "203.0.113.10"
mode = "hash"
dc = "dc1"
http = "127.0.0.1:9191"
secret = "a-long-enough-secret"
node_timeout = 1.5

[[nodes]]
id = "n1"
address = "10.0.0.11:5060"
dc = "dc1"

[[nodes]]
id = "n2"
address = "[fd00::12]:5062"
transport = "tcp"
dc = "dc2"
weight = 3

[tenants."Acme.example"]
nodes = ["n2"]

[[carriers]]
address = "198.51.100.7"
tenant = "acme.example"
"""


def test_config_file_is_read_and_checked(tmp_path):
    p = tmp_path / "sbc.toml"
    p.write_text(TOML)
    cfg = load(p)
    assert [(n.id, n.host, n.port, n.transport, n.dc, n.weight) for n in cfg.nodes] == [
        ("n1", "10.0.0.11", 5060, "udp", "dc1", 1), ("n2", "fd00::12", 5062, "tcp", "dc2", 3)]
    assert cfg.listens[1].host == "::" and cfg.internal_listens[0].port == 5070
    assert cfg.tenants["acme.example"].mode == "static" and cfg.tenants["acme.example"].nodes == ("n2",)
    assert cfg.carriers[0].tenant == "acme.example" and cfg.node_timeout == 1.5
    assert (cfg.http_host, cfg.http_port, cfg.secret) == ("127.0.0.1", 9191, b"a-long-enough-secret")


@pytest.mark.parametrize("data, words", [
    ({"nodes": [{"address": "10.0.0.1"}], "sbc": {"mode": "random"}}, "sbc.mode"),
    ({"nodes": [{"address": "10.0.0.1:99999"}]}, "nodes[0].address"),
    ({"nodes": [{"address": "10.0.0.1", "transport": "sctp"}]}, "nodes[0].transport"),
    ({"nodes": [{"id": "x", "address": "h"}, {"id": "x", "address": "h2"}]}, "appears twice"),
    ({"nodes": [{"address": "h"}], "tenants": {"t": {"nodes": ["nope"]}}}, "unknown node id"),
    ({"nodes": [{"address": "h", "wieght": 2}]}, "unknown key"),
    ({"nodes": [{"address": "h"}], "sbc": {"listen": ["sctp:0.0.0.0:5060"]}}, "sbc.listen"),
    ({"nodes": [{"address": "h"}], "sbc": {"secret": "short"}}, "sbc.secret"),
    ({"nodes": [{"address": "h"}], "sbc": {"node_timeout": "2"}}, "sbc.node_timeout"),
    ({}, "no nodes"),
    ({"nodes": [{"address": "h"}], "sbc": {"advertise": "example.com"}}, "sbc.advertise"),
])
def test_bad_config_says_what_is_wrong(data, words):
    with pytest.raises(SbcConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        from_dict(data)


def test_bad_toml_file(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("[sbc\nmode=")
    with pytest.raises(SbcConfigError, match="not valid TOML"):
        load(p)
    with pytest.raises(SbcConfigError, match="no such config file"):
        load(tmp_path / "missing.toml")


def test_flags_override_the_file(tmp_path):
    p = tmp_path / "sbc.toml"
    p.write_text(TOML)
    args = build_parser().parse_args(["--config", str(p), "--mode", "round_robin", "--node", "z=10.9.0.1:5080,dc=dc3,weight=2",
                                      "--listen", "udp:127.0.0.1:5999"])
    cfg = config_from_args(args)
    assert cfg.mode == "round_robin" and [n.id for n in cfg.nodes] == ["z"] and cfg.nodes[0].weight == 2
    assert cfg.listens[0].port == 5999 and cfg.advertise_address == "203.0.113.10"


def test_cli_errors_exit_2_with_a_message(capsys):
    assert main(["--check"]) == 2
    assert "error: no nodes" in capsys.readouterr().err
    assert main(["--node", "n=10.0.0.1:5060,weight", "--check"]) == 2
    assert "key=value" in capsys.readouterr().err
    assert main(["--node", "n=10.0.0.1:5060", "--check"]) == 0


def test_hivepbx_sbc_subcommand_dispatches(capsys):
    from node.cli import main as hivepbx

    assert hivepbx(["sbc", "--node", "10.0.0.1", "--check"]) == 0
    assert "1 node(s)" in capsys.readouterr().out
