"""Cassandra backend pieces: the CDR store (cdr_store), its schema and the CLI that applies
it (schema), and the asyncio bridge to cassandra-driver (aio)."""
