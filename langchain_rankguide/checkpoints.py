"""Durable runs: the one factory that opens the checkpointer a configuration names.

:func:`open_checkpointer` turns the ``checkpoint`` section (or a ``--checkpoint`` value) into a
LangGraph checkpointer: ``SqliteSaver`` on a local file, or LangGraph's ``PostgresSaver`` on a
connection pool (the ``postgres`` extra: ``pip install 'langchain-rankguide[postgres]'``).
``rankguide run``, ``rankguide serve`` (each worker) and :meth:`RankGuideApp.from_config
<langchain_rankguide.app.RankGuideApp.from_config>` all open theirs here.

PostgreSQL is reached once before anything else runs, so an unreachable server, a wrong password
or a missing database is one :class:`~langchain_rankguide.errors.CheckpointError` line; later
failures are the same error. Every message names the store with its password replaced by
``***``. The tables are created (``PostgresSaver.setup()``) once, under an advisory lock, so
workers starting together never race on the migrations.

Example:
    >>> from langchain_rankguide.config import load_config
    >>> config = load_config(None, overrides={"checkpoint.backend": "postgres"})
    >>> saver = open_checkpointer(config.checkpoint)  # doctest: +SKIP
    >>> # the URL came from $RANKGUIDE_POSTGRES_URL; the tables now exist
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from langchain_rankguide.config import CheckpointConfig, postgres_url_problem
from langchain_rankguide.config.models import POSTGRES_SCHEMES
from langchain_rankguide.errors import CheckpointError, ConfigError, ThreadBusyError

CONNECT_TIMEOUT_S = 10
"""Seconds to wait for PostgreSQL to accept a connection (at start, and for a pooled one)."""

SETUP_LOCK_ID = 0x52414E4B47  # "RANKG"
"""The advisory lock held while the checkpoint tables are created or migrated."""

_PASSWORD_PARAM = re.compile(r"(?i)(password=)[^&\s]*")


@dataclass(frozen=True)
class CheckpointStore:
    """Where runs are checkpointed.

    Attributes:
        kind: ``sqlite`` or ``postgres``.
        location: the SQLite file, or the PostgreSQL URL (which may hold a password: show
            :meth:`describe` instead).
        source: what named it, for messages (``--checkpoint``, ``checkpoint.sqlite_path``,
            ``$RANKGUIDE_POSTGRES_URL``, ...).
    """

    kind: Literal["sqlite", "postgres"]
    location: str
    source: str

    def describe(self) -> str:
        """The store for a message: the file, or the URL with its password as ``***``."""
        return self.location if self.kind == "sqlite" else redact_url(self.location)

    def scrub(self, text: str) -> str:
        """``text`` on one line, with this store's password (if any) replaced by ``***``."""
        if self.kind == "postgres":
            text = text.replace(self.location, self.describe())
            for secret in _passwords(self.location):
                text = text.replace(secret, "***")
        return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def redact_url(url: str) -> str:
    """A PostgreSQL URL with its password (in the authority or the query) replaced by ``***``.

    Example:
        >>> redact_url("postgresql://app:s3cret@db:5432/runs?sslmode=require")
        'postgresql://app:***@db:5432/runs?sslmode=require'
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            user_info, _, host = netloc.rpartition("@")
            netloc = f"{user_info.split(':', 1)[0]}:***@{host}"
        query = _PASSWORD_PARAM.sub(r"\1***", parts.query)
    except ValueError:
        return f"{url.split(':', 1)[0]}://***"
    return parts._replace(netloc=netloc, query=query).geturl()


def _passwords(url: str) -> set[str]:
    """The password's spellings in ``url`` (as written and decoded), to scrub from messages."""
    found: set[str] = set()
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        found |= {password, unquote(password)}
    for match in _PASSWORD_PARAM.finditer(url):
        value = match.group(0).split("=", 1)[1]
        if value:
            found |= {value, unquote(value)}
    return found


def checkpoint_store(
    config: CheckpointConfig, *, target: str | None = None
) -> CheckpointStore | None:
    """The store a configuration (or a ``--checkpoint`` value, which wins) names, unopened.

    Args:
        config: the ``checkpoint`` section.
        target: a ``--checkpoint`` value: a SQLite file or a ``postgresql://`` URL.

    Returns:
        The store, or ``None`` when runs stay in memory.

    Raises:
        ConfigError: the PostgreSQL URL's variable is unset, or holds no PostgreSQL URL.
    """
    if target:
        if urlsplit(target).scheme in POSTGRES_SCHEMES:
            return CheckpointStore("postgres", target, "--checkpoint")
        return CheckpointStore("sqlite", target, "--checkpoint")
    if config.store == "sqlite":
        return CheckpointStore("sqlite", str(config.sqlite_path), "checkpoint.sqlite_path")
    if config.store != "postgres":
        return None
    if config.postgres_url is not None:
        return CheckpointStore("postgres", config.postgres_url, "checkpoint.postgres_url")
    name = config.postgres_url_env
    url = os.environ.get(name, "").strip()
    if not url:
        raise ConfigError(
            f"checkpoint.postgres_url_env: environment variable {name!r} is not set; export "
            "it with the PostgreSQL URL (postgresql://USER:PASSWORD@HOST:5432/DBNAME)"
        )
    problem = postgres_url_problem(url)
    if problem:
        raise ConfigError(f"checkpoint.postgres_url_env: the value of {name} {problem}")
    return CheckpointStore("postgres", url, f"${name}")


def open_checkpointer(
    config: CheckpointConfig,
    *,
    target: str | None = None,
    setup: bool = True,
    connections: int = 4,
) -> Any:
    """Open the checkpointer the configuration names (``None`` when runs stay in memory).

    Args:
        config: the ``checkpoint`` section.
        target: a ``--checkpoint`` value (a SQLite file or a ``postgresql://`` URL); it
            replaces the section's store.
        setup: create or migrate PostgreSQL's checkpoint tables (the ``rankguide serve``
            workers skip it: their parent did it once before starting them).
        connections: most PostgreSQL connections the pool opens (checkpoint writes are short;
            a durable server run also holds one for its thread's lease). The pool lives until
            the process exits, or ``saver.conn.close()``.

    Returns:
        A LangGraph checkpointer, or ``None``.

    Raises:
        ConfigError: the URL's variable is unset or holds no PostgreSQL URL.
        CheckpointError: the store cannot be opened: a file that is not SQLite, PostgreSQL
            unreachable, a wrong password, a missing database, the extra not installed.
    """
    store = checkpoint_store(config, target=target)
    if store is None:
        return None
    if store.kind == "sqlite":
        return _open_sqlite(store)
    return _open_postgres(store, setup=setup, connections=connections)


def _open_sqlite(store: CheckpointStore) -> Any:
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver

    try:
        connection = sqlite3.connect(store.location, check_same_thread=False)
        # connect() is lazy: reading the schema is what finds a file that is not a database.
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise CheckpointError(f"cannot open checkpoint database {store.location}: {exc}") from None
    return SqliteSaver(connection)


@contextmanager
def _reporting(store: CheckpointStore, doing: str) -> Iterator[None]:
    """Turn a PostgreSQL error into one scrubbed :class:`CheckpointError` line."""
    import psycopg

    try:
        yield
    except psycopg.Error as exc:
        # ``from None``: the driver's own exception may quote the URL it was given.
        raise CheckpointError(
            f"{doing} PostgreSQL checkpoint store {store.describe()} (from {store.source}): "
            f"{store.scrub(str(exc)) or type(exc).__name__}"
        ) from None


def _postgres_modules() -> Any:
    try:
        import psycopg
        import psycopg_pool
        from langgraph.checkpoint import postgres
    except ImportError:
        raise CheckpointError(
            "a PostgreSQL checkpoint store needs the postgres extra: "
            "pip install 'langchain-rankguide[postgres]'"
        ) from None
    return psycopg, psycopg_pool, postgres


def _settings() -> dict[str, Any]:
    """LangGraph's own connection settings for its saver.

    Autocommit, no server-side prepared statements (poolers such as PgBouncer refuse them),
    rows as dicts.
    """
    from psycopg.rows import dict_row

    return {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}


def _reach_postgres(store: CheckpointStore, *, setup: bool) -> None:
    """Connect once (and create or migrate the tables): fails with the server's own reason.

    A pool would only time out; a direct connection says refused, wrong password or no such
    database.
    """
    psycopg, _, postgres = _postgres_modules()
    with _reporting(store, "cannot reach the"):
        with psycopg.connect(
            store.location, connect_timeout=CONNECT_TIMEOUT_S, **_settings()
        ) as conn:
            if setup:
                conn.execute("SELECT pg_advisory_lock(%s)", (SETUP_LOCK_ID,))
                try:
                    postgres.PostgresSaver(conn).setup()
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK_ID,))


def prepare_store(config: CheckpointConfig, *, target: str | None = None) -> CheckpointStore | None:
    """Check that the store opens, and create PostgreSQL's tables, without keeping it open.

    ``rankguide serve --workers N`` calls it once before starting the workers, which then open
    the store with ``setup=False``.

    Raises:
        ConfigError: as :func:`checkpoint_store`.
        CheckpointError: as :func:`open_checkpointer`.
    """
    store = checkpoint_store(config, target=target)
    if store is not None and store.kind == "sqlite":
        _open_sqlite(store).conn.close()
    elif store is not None:
        _reach_postgres(store, setup=True)
    return store


def _open_postgres(store: CheckpointStore, *, setup: bool, connections: int) -> Any:
    _, psycopg_pool, postgres = _postgres_modules()
    _reach_postgres(store, setup=setup)
    pool = psycopg_pool.ConnectionPool(
        store.location,
        min_size=1,
        max_size=max(1, connections),
        kwargs={**_settings(), "connect_timeout": CONNECT_TIMEOUT_S},
        timeout=CONNECT_TIMEOUT_S,
        check=psycopg_pool.ConnectionPool.check_connection,
        name="rankguide-checkpoints",
        open=False,
    )
    pool.open(wait=False)
    atexit.register(pool.close)
    return _reported_saver(postgres.PostgresSaver)(pool, store)


@functools.cache
def _reported_saver(base: type) -> type:
    """``PostgresSaver`` whose database errors are scrubbed :class:`CheckpointError` lines."""

    class ReportedPostgresSaver(base):
        def __init__(self, pool: Any, store: CheckpointStore) -> None:
            super().__init__(pool)
            self.store = store

        @contextmanager
        def _cursor(self, *, pipeline: bool = False) -> Iterator[Any]:
            # Every query of the saver goes through here.
            with _reporting(self.store, "cannot use the"):
                with super()._cursor(pipeline=pipeline) as cursor:
                    yield cursor

    return ReportedPostgresSaver


_LOCAL_THREADS: set[tuple[int, str]] = set()
_LOCAL_LOCK = threading.Lock()


@contextmanager
def thread_lease(checkpointer: Any, thread_id: str) -> Iterator[None]:
    """Hold ``thread_id`` while a run goes on it, so that two runs never write one thread.

    On PostgreSQL the lease is an advisory lock held by a pooled connection, so it covers every
    process and machine sharing the database, and it ends with its holder: a worker killed
    mid-run drops its connection and the lock with it. Elsewhere it covers this process.

    Raises:
        ThreadBusyError: the thread is being run now.
    """
    pool: Any = getattr(checkpointer, "conn", None)
    store = getattr(checkpointer, "store", None)
    if isinstance(store, CheckpointStore) and hasattr(pool, "connection"):
        with _postgres_lease(store, pool, thread_id):
            yield
    else:
        with _local_lease((id(checkpointer), thread_id)):
            yield


@contextmanager
def _postgres_lease(store: CheckpointStore, pool: Any, thread_id: str) -> Iterator[None]:
    with _reporting(store, "cannot use the"), pool.connection() as conn:
        key = "SELECT hashtextextended(%s, 0) AS k"
        lock_id = conn.execute(key, (thread_id,)).fetchone()["k"]
        got = conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (lock_id,)).fetchone()
        if not got["ok"]:
            raise _busy(thread_id)
        try:
            yield
        finally:
            # Session-level: it must be released before the connection goes back to the pool.
            conn.execute("SELECT pg_advisory_unlock(%s)", (lock_id,))


@contextmanager
def _local_lease(key: tuple[int, str]) -> Iterator[None]:
    with _LOCAL_LOCK:
        if key in _LOCAL_THREADS:
            raise _busy(key[1])
        _LOCAL_THREADS.add(key)
    try:
        yield
    finally:
        with _LOCAL_LOCK:
            _LOCAL_THREADS.discard(key)


def _busy(thread_id: str) -> ThreadBusyError:
    return ThreadBusyError(
        f"thread {thread_id!r} is being run by another request; retry once it has ended"
    )
