"""The peer harness checked before any PBX is involved: our SIPp scenarios played against each
other (and against a small registrar written here, which checks digests on its own), and two
baresip phones calling each other directly with different tones."""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

import pytest

from tests.peers.audio import analyze, tone_share, write_tone
from tests.peers.sipp import SCENARIOS, Sipp, TracedMessage, parse_message_log

pytestmark = pytest.mark.interop

DOMAIN = "selfcheck.test"


def branch(msg: TracedMessage) -> str:
    via = msg.header("Via") or ""
    m = re.search(r";branch=([^;,\s]+)", via)
    assert m, f"no branch in Via of {msg.first_line}"
    return m.group(1)


# -- a registrar of our own: 401 with a Digest challenge, then checks the response -----------


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class Registrar(asyncio.DatagramProtocol):
    """REGISTER without credentials: 401 (Digest, MD5, qop=auth).  With credentials: the
    RFC 2617 §3.2.2 response is recomputed here; right gives 200, wrong 403.  Anything
    else: 405."""

    def __init__(self, passwords: dict[str, str]) -> None:
        self.passwords = passwords
        self.transport: asyncio.DatagramTransport | None = None
        self.log: list[tuple[str, str, int]] = []  # (user, outcome, expires)
        self._nonce = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        text = data.decode(errors="replace").replace("\r\n", "\n")
        head = text.split("\n\n", 1)[0].split("\n")
        hdrs: dict[str, str] = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            hdrs.setdefault(name.strip().lower(), value.strip())
        method, uri = head[0].split(" ")[:2]
        if method != "REGISTER":
            if method != "ACK":
                self._reply(addr, hdrs, "405 Method Not Allowed")
            return
        user = re.search(r"sip:([^@>]+)@", hdrs.get("to", "")).group(1)  # type: ignore[union-attr]
        expires = int(hdrs.get("expires", "3600"))
        auth = hdrs.get("authorization")
        if auth is None:
            self._nonce += 1
            self.log.append((user, "challenged", expires))
            self._reply(addr, hdrs, "401 Unauthorized",
                        f'WWW-Authenticate: Digest realm="{DOMAIN}", nonce="n{self._nonce}", '
                        'algorithm=MD5, qop="auth"\r\n')
            return
        p = dict(re.findall(r'(\w+)="?([^",]*)"?', auth))
        ha1 = _md5(f"{p['username']}:{p['realm']}:{self.passwords.get(p['username'], '')}")
        ha2 = _md5(f"REGISTER:{p['uri']}")
        want = _md5(f"{ha1}:{p['nonce']}:{p['nc']}:{p['cnonce']}:{p['qop']}:{ha2}") if "qop" in p \
            else _md5(f"{ha1}:{p['nonce']}:{ha2}")
        if p["username"] == user and p.get("response") == want and uri == f"sip:{DOMAIN}":
            self.log.append((user, "registered" if expires else "unregistered", expires))
            contact = f"Contact: {hdrs['contact']};expires={expires}\r\n" if expires else ""
            self._reply(addr, hdrs, "200 OK", contact)
        else:
            self.log.append((user, "forbidden", expires))
            self._reply(addr, hdrs, "403 Forbidden")

    def _reply(self, addr: tuple[str, int], hdrs: dict[str, str], status: str, extra: str = "") -> None:
        to = hdrs["to"] if ";tag=" in hdrs["to"] else hdrs["to"] + ";tag=reg1"
        msg = (f"SIP/2.0 {status}\r\nVia: {hdrs['via']}\r\nFrom: {hdrs['from']}\r\nTo: {to}\r\n"
               f"Call-ID: {hdrs['call-id']}\r\nCSeq: {hdrs['cseq']}\r\n{extra}Content-Length: 0\r\n\r\n")
        assert self.transport is not None
        self.transport.sendto(msg.encode(), addr)


@pytest.fixture
async def registrar():
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: Registrar({"1001": "s3cret", "1002": "other"}), local_addr=("127.0.0.1", 0))
    host, port = transport.get_extra_info("sockname")[:2]
    proto.address = f"{host}:{port}"
    try:
        yield proto
    finally:
        transport.close()


# -- every scenario loads and renders its first message -------------------------------------


def _selfcheck_keys(tmp_path) -> dict[str, object]:
    """Values for the -key / {{key}} placeholders scenarios take from their tests; what
    matters here is that SIPp accepts the scenario, not the values."""
    from tests.peers.rtp_pcap import rfc4733_packets, write_pcap

    return {
        "rtp_ip": "127.0.0.1", "rtp_port": 40000, "formats": "0 101", "hold_ms": 100, "dtmf_after_ms": 100,
        "talk_ms": 100,
        "pcap": write_pcap(tmp_path / "selfcheck.pcap", rfc4733_packets("1")),
        "reject_code": 486, "reject_reason": "Busy Here", "refer_to": "sip:1003@127.0.0.1",
        "replaces": "selfcheck;to-tag=1;from-tag=2",
    }


@pytest.mark.parametrize("name", sorted(p.name for p in SCENARIOS.glob("*.xml")))
async def test_scenario_loads(name: str, peers, tmp_path) -> None:
    """SIPp rejects a scenario with bad XML, an unknown keyword or a variable used once only
    at start-up; a caller must also get its first message out."""
    text = (SCENARIOS / name).read_text(encoding="latin-1")
    keys = {k: v for k, v in _selfcheck_keys(tmp_path).items() if f"[{k}]" in text or "{{" + k + "}}" in text}
    if name.startswith("uas_") and name != "uas_register_then_answer.xml":
        uas = await peers.sipp_uas(name, timeout=5, keys=keys)
        result = await uas.stop(grace=1.0)
        assert result.traced == [], result.describe()
    else:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[bytes] = loop.create_future()

        class Sink(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                if not got.done():
                    got.set_result(data)

        transport, _ = await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0))
        try:
            port = transport.get_extra_info("sockname")[1]
            run = peers.sipp(name, f"127.0.0.1:{port}", service="1002", timeout=2, keys=keys)
            await run.start()
            first = await asyncio.wait_for(got, 5)
            result = await run.stop(grace=1.0)
        finally:
            transport.close()
        assert re.match(rb"(INVITE|REGISTER|SUBSCRIBE) sip:\S+ SIP/2\.0\r\n", first), first[:200]
        assert b"[" not in first.split(b"\r\n\r\n")[0], f"unexpanded keyword in {first!r}"
        assert result.sent(), result.describe()
    assert "Unsupported keyword" not in result.errors and "Invalid XML" not in result.errors, result.errors


# -- SIPp against SIPp ------------------------------------------------------------------------


async def test_call_answered(peers) -> None:
    uas = await peers.sipp_uas("uas_answer", timeout=15)
    uac = await peers.sipp("uac_call", uas.address, service="1002", user="1001", domain=DOMAIN,
                           duration_ms=300, timeout=15).run()
    server = await uas.wait()
    uac.assert_ok()
    server.assert_ok()
    (invite,) = server.received("INVITE")
    assert invite.first_line == f"INVITE sip:1002@{DOMAIN} SIP/2.0"
    for line in ("a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=rtpmap:101 telephone-event/8000"):
        assert line in invite.body
    assert f"m=audio {uac.argv[uac.argv.index('-mp') + 1]} RTP/AVP 0 8 101" in invite.body
    assert [m.method for m in server.received()] == ["INVITE", "ACK", "BYE"]
    # the 2xx ACK and the BYE go to the callee's Contact, with its To tag (RFC 3261 §12.2.1.1)
    ok = server.sent(200)[0]
    contact = re.search(r"<([^>]+)>", ok.header("Contact") or "").group(1)  # type: ignore[union-attr]
    to_tag = (ok.header("To") or "").split(";tag=")[1]
    for m in server.received("ACK") + server.received("BYE"):
        assert m.first_line.split()[1] == contact
        assert (m.header("To") or "").endswith(f";tag={to_tag}")
    assert branch(server.received("ACK")[0]) != branch(invite)


async def test_call_answers_a_digest_challenge(peers) -> None:
    uas = await peers.sipp_uas("uas_auth_answer", timeout=15,
                               keys={"auth_user": "1001", "auth_pass": "s3cret", "domain": DOMAIN})
    uac = await peers.sipp("uac_call", uas.address, service="1002", domain=DOMAIN,
                           auth_user="1001", auth_password="s3cret", timeout=15).run()
    server = await uas.wait()
    uac.assert_ok()
    server.assert_ok()
    first, second = server.received("INVITE")
    assert first.header("Authorization") is None
    assert (second.header("Authorization") or "").startswith('Digest username="1001"')
    ack401 = server.received("ACK")[0]
    assert branch(ack401) == branch(first)  # RFC 3261 §17.1.1.3
    assert [m.status for m in server.sent()] == [401, 100, 180, 200, 200]


async def test_call_with_a_wrong_password_fails(peers) -> None:
    uas = await peers.sipp_uas("uas_auth_answer", timeout=15,
                               keys={"auth_user": "1001", "auth_pass": "s3cret", "domain": DOMAIN})
    uac = await peers.sipp("uac_call", uas.address, service="1002", domain=DOMAIN,
                           auth_user="1001", auth_password="wrong", timeout=5).run()
    server = await uas.wait()
    assert not uac.ok
    assert uac.received(403), uac.describe()
    assert [m.status for m in server.sent() if m.method == "INVITE"] == [401, 403]


@pytest.mark.parametrize(("uas_scenario", "keys", "expected", "ok"), [
    ("uas_busy", {}, 486, True),
    ("uas_reject", {"reject_code": 480, "reject_reason": "Temporarily Unavailable"}, 480, True),
    ("uas_reject", {"reject_code": 480, "reject_reason": "Temporarily Unavailable"}, 486, False),
    ("uas_answer", {}, 486, False),
])
async def test_call_expecting_an_error(peers, uas_scenario, keys, expected, ok) -> None:
    uas = await peers.sipp_uas(uas_scenario, timeout=10, keys=keys)
    uac = await peers.sipp("uac_call_expect_error", uas.address, service="1002", domain=DOMAIN,
                           variables={"expected": expected}, timeout=5).run()
    await uas.stop(grace=1.0)
    assert uac.ok is ok, uac.describe()
    if ok:
        (invite,) = uac.sent("INVITE")
        (ack,) = uac.sent("ACK")
        assert branch(ack) == branch(invite)  # RFC 3261 §17.1.1.3
        assert f"final response {expected}" in uac.logs


async def test_call_expecting_an_error_after_a_challenge(peers) -> None:
    """The error block after the authenticated re-INVITE: a wrong password ends in 403."""
    uas = await peers.sipp_uas("uas_auth_answer", timeout=10,
                               keys={"auth_user": "1001", "auth_pass": "s3cret", "domain": DOMAIN})
    uac = await peers.sipp("uac_call_expect_error", uas.address, service="1002", domain=DOMAIN,
                           auth_user="1001", auth_password="wrong", variables={"expected": 403},
                           timeout=5).run()
    await uas.stop(grace=1.0)
    uac.assert_ok()
    first, second = uac.sent("INVITE")
    acks = uac.sent("ACK")
    assert [branch(a) for a in acks] == [branch(first), branch(second)]  # RFC 3261 §17.1.1.3
    assert second.header("Proxy-Authorization") or second.header("Authorization")


async def test_cancel_while_ringing(peers) -> None:
    uas = await peers.sipp_uas("uas_noanswer", timeout=15)
    uac = await peers.sipp("uac_cancel", uas.address, service="1002", domain=DOMAIN,
                           duration_ms=200, timeout=15).run()
    server = await uas.wait()
    uac.assert_ok()
    server.assert_ok()
    (invite,) = server.received("INVITE")
    (cancel,) = server.received("CANCEL")
    (ack,) = server.received("ACK")
    assert branch(cancel) == branch(invite) == branch(ack)  # RFC 3261 §9.1, §17.1.1.3
    assert (cancel.header("CSeq") or "").split()[0] == (invite.header("CSeq") or "").split()[0]
    assert [(m.status, m.method) for m in uac.received() if (m.status or 0) >= 200] == [
        (200, "CANCEL"), (487, "INVITE")]


async def test_hold_and_resume(peers) -> None:
    uas = await peers.sipp_uas("uas_hold", timeout=15)
    uac = await peers.sipp("uac_hold_resume", uas.address, service="1002", domain=DOMAIN,
                           duration_ms=200, timeout=15).run()
    server = await uas.wait()
    uac.assert_ok()
    server.assert_ok()
    invites = server.received("INVITE")
    assert ["a=sendrecv" in i.body for i in invites] == [True, False, True]
    assert "a=sendonly" in invites[1].body
    answers = [m for m in uac.received(200) if m.method == "INVITE"]
    assert ["a=recvonly" in a.body for a in answers] == [False, True, False]
    versions = [re.search(r"o=\S+ \S+ (\d+)", i.body).group(1) for i in invites]  # type: ignore[union-attr]
    assert versions == ["1", "2", "3"]


async def test_hold_is_refused_by_a_callee_that_cannot_hold(peers) -> None:
    """uac_hold_resume checks the answer: a callee that ignores the re-INVITE fails it."""
    uas = await peers.sipp_uas("uas_answer", timeout=10)
    uac = await peers.sipp("uac_hold_resume", uas.address, service="1002", domain=DOMAIN,
                           duration_ms=100, timeout=4).run()
    await uas.stop(grace=1.0)
    assert not uac.ok


async def test_callee_hangs_up(peers) -> None:
    uas = await peers.sipp_uas("uas_answer_hangup", timeout=15, variables={"hangup_ms": 300})
    uac = await peers.sipp("uac_call_remote_bye", uas.address, service="1002", domain=DOMAIN,
                           timeout=15).run()
    server = await uas.wait()
    uac.assert_ok()
    server.assert_ok()
    (bye,) = uac.received("BYE")
    (invite,) = uac.sent("INVITE")
    assert bye.header("Call-ID") == invite.header("Call-ID")
    contact = re.search(r"<([^>]+)>", invite.header("Contact") or "").group(1)  # type: ignore[union-attr]
    assert bye.first_line.split()[1] == contact
    gap = bye.at - uac.sent("ACK")[0].at
    assert gap >= 0.25, f"callee hung up {gap:.3f}s after the ACK, hangup_ms was 300"


# -- registration ----------------------------------------------------------------------------


async def test_register_with_digest(peers, registrar) -> None:
    reg = await peers.sipp("uac_register_auth", registrar.address, user="1001", domain=DOMAIN,
                           auth_user="1001", auth_password="s3cret", timeout=10).run()
    reg.assert_ok()
    unreg = await peers.sipp("uac_register_auth", registrar.address, user="1001", domain=DOMAIN,
                             auth_user="1001", auth_password="s3cret", keys={"expires": 0},
                             timeout=10).run()
    unreg.assert_ok()
    assert registrar.log == [("1001", "challenged", 3600), ("1001", "registered", 3600),
                             ("1001", "challenged", 0), ("1001", "unregistered", 0)]


async def test_register_with_a_wrong_password_fails(peers, registrar) -> None:
    reg = await peers.sipp("uac_register_auth", registrar.address, user="1001", domain=DOMAIN,
                           auth_user="1001", auth_password="nope", timeout=5).run()
    assert not reg.ok
    assert reg.received(403), reg.describe()
    assert registrar.log[-1] == ("1001", "forbidden", 3600)


async def test_registered_sipp_phone_receives_a_call(peers, registrar) -> None:
    phone = await peers.sipp_phone(registrar.address, user="1002", password="other", domain=DOMAIN,
                                   registered_ms=1500)
    for _ in range(100):  # until the registrar has accepted it
        if ("1002", "registered", 3600) in registrar.log:
            break
        await asyncio.sleep(0.05)
    assert ("1002", "registered", 3600) in registrar.log
    uac = await peers.sipp("uac_call", phone.address, service="1002", domain=DOMAIN,
                           duration_ms=100, timeout=10).run()
    uac.assert_ok()
    result = await phone.wait()
    result.assert_ok()
    assert len(result.received("INVITE")) == 1
    assert [m.method for m in result.received() if m.status is None] == ["INVITE", "ACK", "BYE"]
    assert registrar.log[-1] == ("1002", "unregistered", 0)


async def test_registered_sipp_phone_hangs_up(peers, registrar) -> None:
    """-set reaches the out-of-call scenario: the phone hangs up after hangup_ms."""
    phone = await peers.sipp_phone(registrar.address, user="1002", password="other", domain=DOMAIN,
                                   registered_ms=1500, answer_with="uas_answer_hangup",
                                   variables={"hangup_ms": 300})
    for _ in range(100):
        if ("1002", "registered", 3600) in registrar.log:
            break
        await asyncio.sleep(0.05)
    uac = await peers.sipp("uac_call_remote_bye", phone.address, service="1002", domain=DOMAIN,
                           timeout=10).run()
    uac.assert_ok()
    (await phone.wait()).assert_ok()
    assert uac.received("BYE")[0].at - uac.sent("ACK")[0].at >= 0.25


def test_message_log_parser() -> None:
    log = (
        "----------------------------------------------- 2026-01-01 00:00:00.000000\n"
        "UDP message received [10] bytes :\n\nSIP/2.0 180 Ringing\r\nCSeq: 1 INVITE\r\n\r\n\n"
        "----------------------------------------------- 2026-01-01 00:00:00.000001\n"
        "UDP message sent (10 bytes):\n\nBYE sip:a@b SIP/2.0\r\nCSeq: 2 BYE\r\n\r\n\n"
    )
    first, second = parse_message_log(log)
    assert (first.direction, first.status, first.method) == ("received", 180, "INVITE")
    assert second.at - first.at == pytest.approx(1e-6, abs=1e-7)
    assert (second.direction, second.status, second.method) == ("sent", None, "BYE")


def test_sync_run_reports_failure(tmp_path: Path) -> None:
    """Nothing listens on the target: the run fails within its timeout, it does not hang."""
    result = Sipp("uac_call", "127.0.0.1:9", service="1002", timeout=2, workdir=tmp_path).run_sync()
    assert not result.ok
    assert result.successful == 0
    assert not result.timed_out


# -- baresip ---------------------------------------------------------------------------------


async def test_two_baresips_hear_each_other(peers) -> None:
    alice = await peers.baresip("alice@127.0.0.1", tone_hz=440)
    bob = await peers.baresip("bob@127.0.0.1", tone_hz=1000)
    await alice.dial(bob.uri)
    incoming = await bob.wait_incoming()
    assert incoming["peeruri"].startswith("sip:alice@")
    await bob.answer()
    await alice.wait_call_established()
    await bob.wait_call_established()
    await asyncio.sleep(2.0)  # two seconds of audio each way
    await alice.hangup()
    assert (await alice.wait_call_closed())["param"] == "Connection reset by user"
    assert (await bob.wait_call_closed())["param"] == "Connection reset by peer"

    heard_by_bob = analyze(await bob.wait_recording())
    heard_by_alice = analyze(await alice.wait_recording())
    assert abs(heard_by_bob.frequency - 440) < 5, heard_by_bob
    assert abs(heard_by_alice.frequency - 1000) < 5, heard_by_alice
    assert heard_by_bob.rms > 0.1 and heard_by_alice.rms > 0.1
    assert tone_share(bob.recorded_wav_path, 440) > 0.9
    assert tone_share(alice.recorded_wav_path, 1000) > 0.9
    assert tone_share(bob.recorded_wav_path, 1000) < 0.01


async def test_auto_answer_and_callee_hangup(peers) -> None:
    alice = await peers.baresip("alice@127.0.0.1", tone_hz=600)
    bob = await peers.baresip("bob@127.0.0.1", tone_hz=800, auto_answer=True)
    await alice.dial(bob.uri)
    await alice.wait_call_established()
    await bob.wait_call_established()
    await bob.hangup()
    assert (await alice.wait_call_closed())["param"] == "Connection reset by peer"


def test_tone_analysis(tmp_path: Path) -> None:
    tone = analyze(write_tone(tmp_path / "t.wav", 1234, 0.5))
    assert abs(tone.frequency - 1234) < 5
    assert abs(tone.rms - 0.5 / 2**0.5) < 0.01
    assert tone_share(tmp_path / "t.wav", 440) < 0.01
