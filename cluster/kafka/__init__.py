"""Kafka backend of node.ports.EventBus (shared ACD queues and busy lamps across nodes)."""

from cluster.kafka.bus import KafkaBus, open_bus

__all__ = ["KafkaBus", "open_bus"]
