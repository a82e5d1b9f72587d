"""Digest authentication of phones (as registrar and as call server) and towards trunks.

The realm is the tenant's SIP domain, so credentials of one tenant are worthless in
another. Nonces are stateless (HMAC over a timestamp, ``node.sip.auth.DigestServer``), so a
node restart or another node in the cluster accepts them as long as the secret is shared.
"""

from __future__ import annotations

import enum
import os

from node.sip.auth import DigestServer, Verdict, answer_challenge, choose_challenge, credential_fields
from node.sip.errors import SipError
from node.sip.message import Request, Response


class AuthOutcome(enum.Enum):
    OK = "ok"
    #: no credentials for this realm: challenge
    MISSING = "missing"
    #: right password on an expired nonce: challenge with stale=true
    STALE = "stale"
    #: anything else: refuse, with the same answer whatever the reason
    FAILED = "failed"


class Authenticator:
    def __init__(self, secret: bytes, nonce_ttl: float = 300.0, algorithms: tuple[str, ...] = ("MD5",)) -> None:
        self.server = DigestServer(secret, nonce_ttl, algorithms=algorithms)
        self._nc: dict[str, int] = {}
        #: (realm, second, stale, proxy) -> challenge headers: a nonce changes once a second,
        #: and a registration storm asks for the same few thousand times in that second
        self._challenges: dict[tuple, list[tuple[str, str]]] = {}

    def check(
        self, req: Request, realm: str, password: str | None, now: float, proxy: bool = False
    ) -> tuple[AuthOutcome, str | None]:
        """Verify the request's credentials for ``realm``; returns (outcome, digest username)."""
        name = "Proxy-Authorization" if proxy else "Authorization"
        fields = None
        for n, v in req.headers:
            if n != name:
                continue
            try:
                fields = credential_fields(v)  # no Credentials object: the fields suffice
            except SipError:
                return AuthOutcome.FAILED, None
            if fields[1] == realm:
                break
            fields = None
        if fields is None:
            return AuthOutcome.MISSING, None
        username = fields[0]
        # The digest uri is not compared with the Request-URI: SIPp and some phones put the
        # next-hop address there (Kamailio does not check it by default either); the response
        # hash still covers the uri they sent, the method and our nonce.
        verdict = self.server.verify_fields(fields, req.method, realm, password, now)
        if verdict is Verdict.OK:
            return AuthOutcome.OK, username
        if verdict is Verdict.STALE:
            return AuthOutcome.STALE, username
        if verdict is Verdict.BAD_NONCE:
            # a nonce from before a key change or a forged one: challenge afresh
            return AuthOutcome.MISSING, username
        return AuthOutcome.FAILED, username

    def challenge_headers(self, realm: str, now: float, stale: bool = False, proxy: bool = False) -> list[tuple[str, str]]:
        key = (realm, int(now), stale, proxy)
        headers = self._challenges.get(key)
        if headers is None:
            if len(self._challenges) >= 1024:
                self._challenges.clear()
            name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
            headers = self._challenges[key] = [(name, v) for v in self.server.challenge(realm, now, stale)]
        return list(headers)

    def answer(self, resp: Response, req: Request, username: str, password: str) -> tuple[str, str] | None:
        """Credentials answering a trunk's 401/407 to ``req``, or None when we cannot."""
        name = "Proxy-Authenticate" if resp.status == 407 else "WWW-Authenticate"
        values = [v for n, v in resp.headers if n == name]
        ch = choose_challenge(values)
        if ch is None:
            return None
        try:
            value = answer_challenge(ch, req.method, req.uri_text, username, password, os.urandom(8).hex(), 1, req.body)
        except SipError:
            return None
        return ("Proxy-Authorization" if resp.status == 407 else "Authorization", value)
