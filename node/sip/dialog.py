"""Dialog state (RFC 3261 §12) and the in-dialog requests built from it (§12.2.1.1).

A B2BUA keeps one dialog per leg. Requests in a dialog go back over the flow the peer
used (symmetric signalling, RFC 3581), which is what keeps phones behind NAT reachable;
the remote target and route set are still kept and put into the request as the RFC
requires, so a proxy in the path sees a correct message.
"""

from __future__ import annotations

from node.sip.flow import Flow
from node.sip.ids import new_branch
from node.sip.message import Request, Response
from node.sip.uri import NameAddr


class Dialog:
    __slots__ = (
        "call_id", "local_tag", "remote_tag", "local_uri", "remote_uri", "local_seq", "remote_seq",
        "remote_target", "route_set", "flow", "local_contact",
    )

    def __init__(
        self,
        call_id: str,
        local_tag: str,
        remote_tag: str,
        local_uri: str,
        remote_uri: str,
        local_seq: int,
        remote_seq: int,
        remote_target: str,
        route_set: list[str],
        flow: Flow,
        local_contact: str,
    ) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        #: From/To values without tag, as name-addr text
        self.local_uri = local_uri
        self.remote_uri = remote_uri
        self.local_seq = local_seq
        self.remote_seq = remote_seq
        self.remote_target = remote_target
        self.route_set = route_set
        self.flow = flow
        self.local_contact = local_contact

    @classmethod
    def as_uas(cls, req: Request, local_tag: str, flow: Flow, local_contact: str) -> "Dialog":
        """§12.1.1: the UAS side, from the request that created it."""
        frm = req.from_
        to = req.to
        contacts = req.contacts
        target = str(contacts[0].uri) if contacts else str(frm.uri)
        return cls(
            call_id=req.call_id,
            local_tag=local_tag,
            remote_tag=frm.tag or "",
            local_uri=_strip_tag(to),
            remote_uri=_strip_tag(frm),
            local_seq=0,
            remote_seq=req.cseq.seq,
            remote_target=target,
            route_set=req.get_all("Record-Route"),
            flow=flow,
            local_contact=local_contact,
        )

    @classmethod
    def as_uac(cls, req: Request, resp: Response, flow: Flow) -> "Dialog":
        """§12.1.2: the UAC side, from our request and the response that created it."""
        contacts = resp.contacts
        target = str(contacts[0].uri) if contacts else req.uri_text
        return cls(
            call_id=req.call_id,
            local_tag=req.from_.tag or "",
            remote_tag=resp.to.tag or "",
            local_uri=_strip_tag(req.from_),
            remote_uri=_strip_tag(resp.to),
            local_seq=req.cseq.seq,
            remote_seq=0,
            remote_target=target,
            # route set is the Record-Route of the response, reversed (§12.1.2)
            route_set=list(reversed(resp.get_all("Record-Route"))),
            flow=flow,
            local_contact=req.get("Contact") or "",
        )

    def update_target(self, msg: Request | Response) -> None:
        """Target refresh (§12.2): a re-INVITE or its 2xx may carry a new Contact."""
        contacts = msg.contacts
        if contacts:
            self.remote_target = str(contacts[0].uri)

    def create_request(
        self,
        method: str,
        sent_by: str,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        extra: list[tuple[str, str]] | None = None,
        cseq: int | None = None,
    ) -> Request:
        """A new request in this dialog. ACK and CANCEL pass ``cseq`` of their INVITE."""
        if cseq is None:
            self.local_seq += 1
            cseq = self.local_seq
        headers = [
            ("Via", f"SIP/2.0/{self.flow.via_transport} {sent_by};branch={new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"{self.local_uri};tag={self.local_tag}"),
            ("To", f"{self.remote_uri};tag={self.remote_tag}" if self.remote_tag else self.remote_uri),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
        ]
        for r in self.route_set:
            headers.append(("Route", r))
        if method not in ("BYE", "CANCEL", "ACK"):
            headers.append(("Contact", self.local_contact))
        if extra:
            headers.extend(extra)
        if body and content_type:
            headers.append(("Content-Type", content_type))
        return Request(method, self.remote_target, headers, body)

    def accepts(self, req: Request) -> bool:
        """§12.2.2: a request with a lower CSeq than the last one is out of order (500)."""
        seq = req.cseq.seq
        if req.method == "ACK" or req.method == "CANCEL":
            return True
        if self.remote_seq and seq <= self.remote_seq:
            return False
        self.remote_seq = seq
        return True


def _strip_tag(na: NameAddr) -> str:
    if "tag" not in na.params:
        return str(na)
    params = {k: v for k, v in na.params.items() if k != "tag"}
    return str(NameAddr(na.uri, na.display, params))
