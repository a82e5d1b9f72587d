"""Automatic call distribution: queues of callers served by agents, shared by every node.

``engine`` is the sans-I/O state machine (the same ordered log gives the same decisions on
every replica), ``events`` its inputs and outputs and their wire form, ``config`` the queue
document, ``service`` the asyncio adapter over a node.ports.EventBus.
"""
