"""The embedded backend: the three stores sharing one SQLite connection.

One connection per process matters beyond economy: ``PRAGMA data_version`` ignores the
connection's own commits, so the stores reload only for another process's changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from node.embedded.cdr_store import EmbeddedCdrStore
from node.embedded.config_store import EmbeddedConfigStore
from node.embedded.db import Database
from node.embedded.location_store import EmbeddedLocationStore


@dataclass(slots=True)
class EmbeddedBackend:
    db: Database
    config: EmbeddedConfigStore
    locations: EmbeddedLocationStore
    cdrs: EmbeddedCdrStore

    def close(self) -> None:
        self.locations.flush()
        self.db.close()

    def __enter__(self) -> "EmbeddedBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_embedded(data_dir: str | os.PathLike[str], *, create: bool = True, **db_opts) -> EmbeddedBackend:
    """Open (``create``: or make) ``<data_dir>/hivepbx.db``. ``db_opts`` go to ``Database``
    (``poll_interval``, ``clock``); raises ``DatabaseError`` when the file cannot be used."""
    db = Database.open(data_dir, create=create, **db_opts)
    try:
        return EmbeddedBackend(db, EmbeddedConfigStore(db), EmbeddedLocationStore(db), EmbeddedCdrStore(db))
    except BaseException:
        db.close()
        raise
