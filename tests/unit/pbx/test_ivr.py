"""The IVR's menu logic against a scripted caller: options, invalid keys, timeouts, direct
dialling, sub-menus, failed transfers, and document validation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from node.config_rules import ConfigError
from node.pbx import ivr
from node.pbx.app_call import TransferResult


class Caller:
    """Plays the caller: ``keys`` are handed out one per get_digit (None = silence until the timeout)."""

    def __init__(self, keys, *, transfers=None, extensions=("1002", "1003")) -> None:
        self.keys = list(keys)
        self.log: list[tuple] = []
        self.transfers = transfers or {}
        exts = set(extensions)
        self.tenant = SimpleNamespace(id=1, name="t")
        self.config = SimpleNamespace(get_extension=self._ext(exts))
        self.call = SimpleNamespace(answered_leg=None)

    @staticmethod
    def _ext(exts):
        async def get_extension(tenant_id, number):
            return object() if number in exts else None
        return get_extension

    async def play(self, names, *, interruptible=False):
        self.log.append(("play", tuple(names), interruptible))
        if interruptible and self.keys and self.keys[0] is not None:
            return "interrupted"
        return "finished"

    async def get_digit(self, timeout):
        k = self.keys.pop(0) if self.keys else None
        self.log.append(("key", k, timeout))
        return k

    def flush_digits(self):
        self.log.append(("flush",))

    async def transfer(self, number):
        status = self.transfers.get(number, 200)
        self.log.append(("transfer", number))
        if status == 200:
            self.call.answered_leg = object()
        return TransferResult(status == 200, status, number)

    async def run_app(self, kind, name):
        self.log.append(("app", kind, name))
        return name == "801"

    def played(self):
        return [e[1] for e in self.log if e[0] == "play"]


MENU = {"intro": ["welcome"], "prompt": ["menu"], "timeout": 4,
        "options": {"1": {"type": "extension", "value": "1002", "announce": ["transferring"]},
                    "2": {"type": "ivr", "value": "801"}, "3": "1003", "#": {"type": "hangup"}}}


async def test_option_announces_then_transfers():
    c = Caller(["1"])
    await ivr.run(c, "800", MENU)
    assert c.played() == [("welcome",), ("menu",), ("transferring",)]
    assert ("flush",) in c.log and ("transfer", "1002") in c.log
    assert c.log[0] == ("play", ("welcome",), False) and c.log[2] == ("play", ("menu",), True)


async def test_invalid_and_timeout_repeat_then_goodbye():
    c = Caller(["7", None, "5"])
    await ivr.run(c, "800", MENU)
    assert c.played() == [("welcome",), ("menu",), ("invalid",), ("menu",), ("no-input",), ("menu",), ("invalid",),
                          ("goodbye",)]
    assert not [e for e in c.log if e[0] == "transfer"]


async def test_configured_timeout_and_invalid_destinations():
    menu = dict(MENU, no_input={"type": "extension", "value": "1003"}, invalid="1002")
    c = Caller([None])
    await ivr.run(c, "800", menu)
    assert ("transfer", "1003") in c.log
    c = Caller(["9"])
    await ivr.run(c, "800", menu)
    assert ("transfer", "1002") in c.log


async def test_failed_transfer_says_unavailable_and_returns_to_menu():
    c = Caller(["3", "#"], transfers={"1003": 486})
    await ivr.run(c, "800", MENU)
    assert c.played() == [("welcome",), ("menu",), ("unavailable",), ("menu",)]
    assert ("transfer", "1003") in c.log


async def test_submenu_and_missing_submenu():
    c = Caller(["2"])
    await ivr.run(c, "800", MENU)
    assert ("app", "ivr", "801") in c.log and c.played()[-1] == ("menu",)
    menu = dict(MENU, options={"2": {"type": "ivr", "value": "899"}, "#": {"type": "hangup"}})
    c = Caller(["2", "#"])
    await ivr.run(c, "800", menu)
    assert c.played() == [("welcome",), ("menu",), ("invalid",), ("menu",)]


async def test_direct_dial_waits_for_more_digits():
    menu = dict(MENU, direct_dial=True)
    c = Caller(["1", "0", "0", "3", None])  # 1003, then the inter-digit timeout
    await ivr.run(c, "800", menu)
    assert ("transfer", "1003") in c.log and ("transferring",) in c.played()
    c = Caller(["1", None])  # a lone 1 is still option 1
    await ivr.run(c, "800", menu)
    assert ("transfer", "1002") in c.log
    c = Caller(["1", "0", "9", "9", "#", "#"])  # no such extension: invalid, then # hangs up
    await ivr.run(c, "800", menu)
    assert ("invalid",) in c.played() and not [e for e in c.log if e[0] == "transfer"]
    assert [e[2] for e in c.log if e[0] == "key"][1] == menu.get("digit_timeout", 2)


def test_validation_messages():
    with pytest.raises(ConfigError, match="unknown IVR key"):
        ivr.validate({"options": {"1": "1002"}, "greeting": "x"})
    with pytest.raises(ConfigError, match="needs options or direct_dial"):
        ivr.validate({})
    with pytest.raises(ConfigError, match="prompt name"):
        ivr.validate({"prompt": ["../../etc/passwd"], "options": {"1": "1002"}})
    with pytest.raises(ConfigError, match="timeout"):
        ivr.validate({"timeout": 0, "options": {"1": "1002"}})
    with pytest.raises(ConfigError, match="external number"):
        ivr.validate({"options": {"1": {"type": "external", "value": "call me"}}})
    with pytest.raises(ConfigError, match="IVR name"):
        ivr.name("main")
    doc = ivr.validate({"options": {"0": "+4930123", "*": "tel:0301234"}, "direct_dial": True})
    assert doc["options"]["0"] == {"type": "external", "value": "+4930123"}
    assert doc["options"]["*"] == {"type": "external", "value": "0301234"}
    assert doc["invalid"] == ivr.DEFAULT_INVALID and doc["timeout"] == 5


async def test_other_features_can_add_destinations():
    seen = []

    async def voicemail(ctx, dest):
        seen.append(dest["value"])
        return "done"

    ivr.register_destination("test_voicemail", lambda v: str(v), voicemail)
    try:
        c = Caller(["4"])
        await ivr.run(c, "800", dict(MENU, options={"4": {"type": "test_voicemail", "value": "1002"}}))
        assert seen == ["1002"]
    finally:
        ivr.DESTINATIONS.pop("test_voicemail")


async def test_external_destinations_are_dialled_as_outside_numbers():
    menu = dict(MENU, options={"8": "tel:0113496000", "9": "+4930123"})
    c = Caller(["8"])
    await ivr.run(c, "800", menu)
    assert ("transfer", "tel:0113496000") in c.log  # bare digits would mean an internal number
    c = Caller(["9"])
    await ivr.run(c, "800", menu)
    assert ("transfer", "+4930123") in c.log
