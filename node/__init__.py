"""hivepbx node: the PBX application server and the sans-I/O protocol core it shares with the SBC."""

from node.compiled import guard as _guard

_guard()  # before any node.sip import: a stale compiled hot path must not load (node/compiled.py)
