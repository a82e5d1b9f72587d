"""Dial-by-name: keypad letters match first or last names of the caller's tenant only."""

from __future__ import annotations

from node.model import Extension
from node.pbx import directory, feature_codes, ivr


def _ext(number: str, name: str, tenant_id: int = 1) -> Extension:
    return Extension(id=int(number), tenant_id=tenant_id, number=number, password="x" * 12, display_name=name)


EXTS = [_ext("2001", "Jasmine Okafor"), _ext("2002", "Karl Jaspers"), _ext("2003", "Lena Smith"),
        _ext("2004", ""), _ext("2005", "O'Brien, Jack")]


def test_keypad_letters():
    assert directory.keys_of("Jas") == "527"
    assert directory.keys_of("smith") == "76484"
    assert directory.keys_of("O'Brien") == "627436"


def test_first_or_last_name_matches_sorted_by_name():
    assert [e.number for e in directory.matches(EXTS, "527")] == ["2001", "2002"]  # Jasmine, Jaspers
    assert [e.number for e in directory.matches(EXTS, "764")] == ["2003"]  # Smith
    assert [e.number for e in directory.matches(EXTS, "522")] == ["2005"]  # Jack
    assert directory.matches(EXTS, "999") == []
    # an extension without a display name is never listed
    assert all(e.number != "2004" for e in directory.matches(EXTS, "2"))


def test_reachable_by_feature_code_and_ivr_option():
    code, doc = feature_codes.validate("*411", {"action": "directory"})
    assert doc["action"] == "directory" and "directory" in feature_codes.APPLICATIONS
    assert "directory" in ivr.DESTINATIONS
