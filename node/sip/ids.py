"""Identifiers the core mints: Via branches (RFC 3261 §8.1.1.7), tags (§19.3), Call-IDs (§8.1.1.4)."""

from __future__ import annotations

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
