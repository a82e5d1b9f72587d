"""Embedded backends: SQLite store and in-process bus for the single-node PBX."""
