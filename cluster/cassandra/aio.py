"""cassandra-driver from asyncio: the driver's own I/O thread runs the request, its
ResponseFuture callbacks resolve an asyncio future on our loop. No thread per request."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence


def execute(session, statement, params: Sequence | None = None, *, timeout: float | None = None) -> asyncio.Future:
    """Run ``statement`` and resolve to all its rows (every page fetched). Raises what the
    driver raises (NoHostAvailable, Unavailable, WriteTimeout, OperationTimedOut, ...)."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future = loop.create_future()
    rows: list = []
    response = session.execute_async(statement, params, timeout=timeout) if timeout is not None \
        else session.execute_async(statement, params)

    def _done(value, exc: BaseException | None) -> None:
        if not result.done():
            if exc is not None:
                result.set_exception(exc)
            else:
                result.set_result(value)

    def on_page(page) -> None:  # driver thread (or ours, if already done)
        if page:
            rows.extend(page)
        if response.has_more_pages:
            response.start_fetching_next_page()
        else:
            loop.call_soon_threadsafe(_done, rows, None)

    def on_error(exc: BaseException) -> None:
        loop.call_soon_threadsafe(_done, None, exc)

    response.add_callbacks(on_page, on_error)
    return result


async def connect(contact_points: Sequence[str], *, port: int = 9042, keyspace: str | None = None,
                  local_dc: str | None = None, username: str | None = None, password: str | None = None,
                  connect_timeout: float = 10.0):
    """(Cluster, Session): token-aware, DC-aware (reads and writes stay in ``local_dc``)."""
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

    profile = ExecutionProfile(load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=local_dc)))
    auth = PlainTextAuthProvider(username, password) if username else None
    cluster = Cluster(
        contact_points=list(contact_points), port=port, auth_provider=auth,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile}, connect_timeout=connect_timeout,
    )
    try:
        session = await asyncio.to_thread(cluster.connect, keyspace)
    except BaseException:
        await asyncio.to_thread(cluster.shutdown)
        raise
    return cluster, session
