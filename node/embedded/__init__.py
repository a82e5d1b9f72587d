"""Embedded backends: SQLite store and in-process bus for the single-node PBX."""

from node.embedded.backend import EmbeddedBackend, open_embedded
from node.embedded.cdr_store import EmbeddedCdrStore
from node.embedded.config_store import EmbeddedConfigStore
from node.embedded.db import DB_FILENAME, Database, DatabaseError
from node.embedded.demo import provision_demo
from node.embedded.location_store import EmbeddedLocationStore
from node.config_rules import ConfigError

__all__ = [
    "ConfigError", "DB_FILENAME", "Database", "DatabaseError", "EmbeddedBackend", "EmbeddedCdrStore",
    "EmbeddedConfigStore", "EmbeddedLocationStore", "open_embedded", "provision_demo",
]
