"""Identifiers the core mints: Via branches (RFC 3261 §8.1.1.7), tags (§19.3), Call-IDs (§8.1.1.4)."""

from __future__ import annotations

import hashlib
import os

#: RFC 3261 §8.1.1.7: branch IDs of compliant elements start with this cookie
MAGIC_COOKIE = "z9hG4bK"


def _rand(nbytes: int) -> str:
    # hex is a token (RFC 3261 §25.1) and several times cheaper than base32 here
    return os.urandom(nbytes).hex()


def new_branch() -> str:
    return MAGIC_COOKIE + _rand(10)


def new_tag() -> str:
    return _rand(8)


def new_call_id() -> str:
    return _rand(15)


_TAG_KEY = os.urandom(16)


def stateless_tag(*request_ids: str) -> str:
    """The To tag of a stateless answer (RFC 3261 §8.2.7: the same request must always get
    the same tag), as a keyed hash of the request's identifying header values: unguessable
    without this process's key, and as random-looking as ``new_tag`` (§19.3)."""
    return hashlib.blake2b("\n".join(request_ids).encode("utf-8", "surrogateescape"), digest_size=8, key=_TAG_KEY).hexdigest()
