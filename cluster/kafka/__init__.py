"""Kafka backend of node.ports.EventBus (shared ACD queues and busy lamps across nodes)."""

from cluster.kafka.bus import KafkaBus

__all__ = ["KafkaBus"]
