"""Topology hiding, sans-I/O: what a message forwarded by the SBC may carry across the edge.

The rules, applied to every forwarded message whatever its direction:

* Via: the SBC sends a request with its own Via only; the response gets back exactly the
  Via list its request arrived with (kept by the server transaction). Neither side ever
  sees the other's Vias.
* Record-Route / Route: removed both ways. The SBC stays in every dialog by Contact
  masquerading instead: each side's remote target is an SBC address.
* Contact from a node (going out): ``sip:user@<sbc external>;sbcn=<sealed>``; the sealed
  token (AES-GCM, key from the config secret) holds the node id and its real Contact, so
  in-dialog requests from outside find their node and phones learn nothing of it.
* Contact from outside (going in): ``sip:user@<sbc internal>;sbcf=<signed>``; the signed
  token holds the phone's flow (transport, address, socket, connection) and its real
  Contact. The node stores it in its registration, so its calls to the phone come back to
  the SBC and leave over the phone's own flow (what gets through its NAT). Signed, not
  encrypted: only nodes see it, and the phone's address is no secret to them. It is
  deterministic so a refresh over the same flow updates the node's binding, never adds one.
* Headers named ``X-Hive-*`` are the nodes' and the SBC's internal ones: stripped from
  everything that crosses the edge in either direction (so none can be injected either).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from node.sip.errors import RemoteProtocolError
from node.sip.flow import Flow
from node.sip.headers import KNOWN_NAMES
from node.sip.message import Request, Response
from node.sip.uri import NameAddr, Uri, split_header_list

FLOW_PARAM = "sbcf"
NODE_PARAM = "sbcn"
INTERNAL_PREFIX = "x-hive-"
#: the real source of a request from outside, told to the node (it may trust it: only the
#: SBC can put it there, since any X-Hive-* header from outside is stripped)
SOURCE_HEADER = "X-Hive-Source"

#: tokens remembered per kind by a Sealer once read (bounded: cleared when full)
READ_CACHE = 4096

_DROP_ALWAYS = frozenset(("Via", "Route", "Record-Route", "Content-Length"))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sealer:
    """Signs and seals the tokens the SBC puts in Contact URIs (base64url: a URI paramchar)."""

    def __init__(self, secret: bytes) -> None:
        self._mac_key = hmac.new(secret, b"hivepbx-sbc-mac", hashlib.sha256).digest()
        self._nonce_key = hmac.new(secret, b"hivepbx-sbc-nonce", hashlib.sha256).digest()
        self._aead = AESGCM(hmac.new(secret, b"hivepbx-sbc-enc", hashlib.sha256).digest())
        #: token → payload of tokens already opened (an in-dialog request repeats its token)
        self._opened: dict[str, str] = {}
        #: token → what read_node_token / read_phone_token made of it (authentic tokens only;
        #: the values are frozen, so one object serves every request of a dialog: no HMAC,
        #: no split, no dataclass built again)
        self._node_read: dict[str, NodeContact] = {}
        self._phone_read: dict[str, PhoneTarget] = {}

    def sign(self, payload: str) -> str:
        data = payload.encode()
        mac = hmac.digest(self._mac_key, data, "sha256")[:12]
        return f"{_b64(data)}.{_b64(mac)}"

    def unsign(self, token: str) -> str | None:
        body, dot, mac = token.partition(".")
        if not dot:
            return None
        try:
            data = _unb64(body)
            ok = hmac.compare_digest(_unb64(mac), hmac.digest(self._mac_key, data, "sha256")[:12])
            return data.decode() if ok else None
        except (ValueError, UnicodeDecodeError):
            return None

    def seal(self, payload: str) -> str:
        data = payload.encode()
        # synthetic nonce (SIV style): deterministic, so the same Contact gives the same URI
        nonce = hmac.digest(self._nonce_key, data, "sha256")[:12]
        return _b64(nonce + self._aead.encrypt(nonce, data, None))

    def unseal(self, token: str) -> str | None:
        hit = self._opened.get(token)
        if hit is not None:
            return hit
        out = self._unseal(token)
        if out is not None:
            if len(self._opened) >= 4096:
                self._opened.clear()
            self._opened[token] = out  # only authentic tokens are remembered
        return out

    def _unseal(self, token: str) -> str | None:
        try:
            raw = _unb64(token)
            if len(raw) < 12 + 16:
                return None
            return self._aead.decrypt(raw[:12], raw[12:], None).decode()
        except (ValueError, InvalidTag, UnicodeDecodeError):
            return None


# ------------------------------------------------------------------ tokens


@dataclass(frozen=True, slots=True)
class PhoneTarget:
    """Where a message for an outside party goes: its flow and its real Contact URI."""

    flow: Flow
    uri: str


@dataclass(frozen=True, slots=True)
class NodeContact:
    node_id: str
    uri: str


def phone_token(sealer: Sealer, flow: Flow, uri: str) -> str:
    t = flow
    return sealer.sign(f"{t.transport}|{t.remote[0]}|{t.remote[1]}|{t.local[0]}|{t.local[1]}|{t.conn_id}|{uri}")


def read_phone_token(sealer: Sealer, token: str) -> PhoneTarget | None:
    hit = sealer._phone_read.get(token)
    if hit is not None:
        return hit
    payload = sealer.unsign(token)
    if payload is None:
        return None
    parts = payload.split("|", 6)
    if len(parts) != 7:
        return None
    transport, rhost, rport, lhost, lport, conn, uri = parts
    try:
        target = PhoneTarget(Flow(transport, (rhost, int(rport)), (lhost, int(lport)), int(conn)), uri)
    except ValueError:
        return None
    _remember(sealer._phone_read, token, target)
    return target


def _remember(cache: dict, token: str, value) -> None:
    if len(cache) >= READ_CACHE:
        cache.clear()
    cache[token] = value


def node_token(sealer: Sealer, node_id: str, uri: str) -> str:
    return sealer.seal(f"{node_id}|{uri}")


def read_node_token(sealer: Sealer, token: str) -> NodeContact | None:
    hit = sealer._node_read.get(token)
    if hit is not None:
        return hit
    payload = sealer.unseal(token)
    if payload is None or "|" not in payload:
        return None
    node_id, _, uri = payload.partition("|")
    contact = NodeContact(node_id, uri)
    _remember(sealer._node_read, token, contact)
    return contact


def token_of(uri_text: str, param: str) -> str | None:
    """The value of our token parameter in a URI, cheaply (no full parse; one C-level scan)."""
    find = _TOKEN_FINDERS.get(param)
    if find is None:
        find = _TOKEN_FINDERS[param] = re.compile(f";{re.escape(param)}=([^;?>]*)").search
    m = find(uri_text)
    return (m.group(1) or None) if m is not None else None


_TOKEN_FINDERS: dict = {}  # param → the search of ";param=value" (our two params, and tests')


# ------------------------------------------------------------------ header rewriting


def is_internal(name: str) -> bool:
    return name.lower().startswith(INTERNAL_PREFIX)


def masquerade_uri(original: Uri, host: str, port: int, transport: str, param: str, token: str) -> Uri:
    """An SBC URI that keeps the user part (phones show it) and carries ``token``."""
    params: dict[str, str | None] = {}
    if transport != "udp":
        params["transport"] = transport
    params[param] = token
    h = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return Uri("sip", original.user, h, port, params)


def rewrite_contacts(value: str, rewrite) -> str:
    """Apply ``rewrite(NameAddr) -> NameAddr | None`` to each element of a Contact value;
    None drops the element. A ``*`` stays as it is."""
    if value.strip() == "*":
        return value
    out: list[str] = []
    for elem in split_header_list(value):
        try:
            na = NameAddr.parse(elem)
        except RemoteProtocolError:
            continue  # the parser checked it already; never forward what we cannot read
        new = rewrite(na)
        if new is not None:
            out.append(str(new))
    return ", ".join(out)


def copy_headers(msg, *, contact=None, extra_drop: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """The headers of ``msg`` that may cross the edge: no Via, Route, Record-Route or
    internal header; Contact values passed through ``contact`` (None keeps them)."""
    out: list[tuple[str, str]] = []
    for name, value in msg.headers:
        if name in _DROP_ALWAYS or name in extra_drop:
            continue
        if name[0] in "xX" and is_internal(name):
            continue
        if name == "Contact" and contact is not None:
            value = contact(value)
            if not value:
                continue
        out.append((name, value))
    return out


#: typed views a forwarded message shares with the one it was made from (the headers behind
#: them cross unchanged), so the transaction layer does not parse again what the parser checked
_SHARED_VIEWS = ("call_id", "cseq", "from", "to", "content_type")

#: what forwarding does with a header, by its canonical name (one lookup per header line;
#: names not here are copied, unless they are internal): drop, Max-Forwards, Contact
_DROP, _MF, _CONTACT = 0, 1, 2
_ACTIONS = {"Via": _DROP, "Route": _DROP, "Record-Route": _DROP, "Content-Length": _DROP,
            "Max-Forwards": _MF, "Contact": _CONTACT}
#: the known header names (the parser stores them so spelt) that cross as they are: one set
#: test copies most header lines (From, To, Call-ID, CSeq, ...)
_COPIED = frozenset(n for n in KNOWN_NAMES if n not in _ACTIONS and not n.lower().startswith(INTERNAL_PREFIX))


def _share_views(src, dst, vias) -> None:
    cache = src._cache
    out = dst._cache
    for k in _SHARED_VIEWS:
        v = cache.get(k)
        if v is not None:
            out[k] = v
    if vias is not None:
        out["vias"] = vias


def _edge_headers(msg, out: list[tuple[str, str]], contact, request: bool) -> list[tuple[str, str]]:
    """``out`` + the headers of ``msg`` that may cross the edge (see ``copy_headers``); for a
    request Max-Forwards decremented, or 70 right after ``out`` when it had none. One pass:
    this runs on every forwarded message."""
    actions = _ACTIONS
    copied = _COPIED
    append = out.append
    mf_at = -1
    for h in msg.headers:
        name = h[0]
        if name in copied:
            append(h)
            continue
        act = actions.get(name)
        if act is None:
            if (name[0] == "x" or name[0] == "X") and name.lower().startswith(INTERNAL_PREFIX):
                continue
            append(h)
        elif act == _CONTACT:
            if contact is None:
                append(h)
            else:
                value = contact(h[1])
                if value:
                    append(("Contact", value))
        elif act == _MF:
            if request and mf_at < 0:
                mf_at = len(out)
                v = msg.max_forwards
                append(("Max-Forwards", str(max(0, (v if v is not None else 70) - 1))))
            else:
                append(h)
    if request and mf_at < 0:
        out.insert(1, ("Max-Forwards", "70"))
    return out


def forward_request(req: Request, uri: str, via: str, *, contact=None, extra: list[tuple[str, str]] | None = None,
                    via_view=None, views: bool = True) -> Request:
    """The request as the SBC sends it on: its own Via only, Max-Forwards decremented.
    ``via_view``: the Via object ``via`` is the text of, when the caller has it. ``views``
    False: the parsed views are not shared (a message only serialised and sent needs none;
    one read later parses its header again, as any message does)."""
    headers = _edge_headers(req, [("Via", via)], contact, True)
    if extra:
        headers.extend(extra)
    out = Request(req.method, uri, headers, req.body)
    if views:
        _share_views(req, out, [via_view] if via_view is not None else None)
    return out


def forward_response(resp: Response, request_vias: list[tuple[str, str]], *, contact=None,
                     views: bool = True) -> Response:
    """The response as the SBC sends it back: the Via headers of the request it answers,
    exactly as that request arrived (the server transaction finds itself by their text).
    ``views``: as for ``forward_request``."""
    out = Response(resp.status, resp.reason, _edge_headers(resp, list(request_vias), contact, False), resp.body)
    if views:
        _share_views(resp, out, None)
    return out


def via_headers(req: Request) -> list[tuple[str, str]]:
    return [(n, v) for n, v in req.headers if n == "Via"]
