"""The registrar's shortcut for building a Binding gives the dataclass's own object."""

from __future__ import annotations

import dataclasses

import pytest

from node.model import Binding
from node.pbx.registrar import _binding


def test_binding_built_through_the_slots_equals_the_dataclass():
    args = (7, "1001", "sip:1001@192.0.2.7:5060", "192.0.2.7", 5060, "udp", 1.7e9, "c@x", 3, "phone/1.0", 0.5, "n1")
    fast, slow = _binding(*args), Binding(*args)
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    assert dataclasses.astuple(fast) == args
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.cseq = 4  # type: ignore[misc]
