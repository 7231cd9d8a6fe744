"""Optuna storages for runs that one process or many share: SQLite (one host) and PostgreSQL/MySQL (many).

Every RDB storage gets Optuna's heartbeat: a worker that dies mid-unit stops beating, and the next worker to
look fails its trial after the grace period; ``RetryFailedTrialCallback`` puts a copy back in the queue (the
``failed_trial`` system attribute names the original), which another worker takes. Passwords never leave
this module in clear: ``redact`` is what logs and reports print, ``without_password`` what config.yaml keeps
(the password comes from the URL given, ``PGPASSWORD`` or ``~/.pgpass`` — libpq reads both).
"""

from __future__ import annotations

import functools
import logging
import time
import warnings
from datetime import datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import optuna

from kdsearch.exceptions import StorageError
from kdsearch.search.optuna_adapter import heartbeat_interval, queue_retry, retry_callback, retry_history

logger = logging.getLogger(__name__)

HEARTBEAT_S = 10  # a worker beats this often while it holds a unit
GRACE_PERIODS = 3  # beats missed before its unit goes back to the queue
MAX_RETRY = 3  # a unit whose workers die this many times is left failed
SQLITE_BUSY_TIMEOUT_S = 60  # several local workers share one SQLite file: wait for a lock, never "database is locked"
FIRST_WRITE_S = SQLITE_BUSY_TIMEOUT_S  # a live process writes a trial's first attribute within one wait for the lock


def _split(url: str):
    return urlsplit(url) if "://" in url else None


def redact(url: str) -> str:
    """The URL as logs may print it: a password becomes ***."""
    parts = _split(url)
    if parts is None or parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def without_password(url: str | None) -> str | None:
    """The URL as a run folder keeps it: no password (workers read it from PGPASSWORD or ~/.pgpass)."""
    parts = _split(url) if url else None
    if parts is None or parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{host}"))


def same_storage(a: str, b: str) -> bool:
    """Do two URLs name one storage (a password present in one and not the other does not count)?"""
    return without_password(a) == without_password(b)


def check_storage(url: str | None) -> str | None:
    """--storage: None (SQLite in the run folder) or a URL Optuna's RDBStorage takes."""
    if url is None:
        return None
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme.split("+", 1)[0] not in ("sqlite", "postgresql", "mysql"):
        raise StorageError(f"--storage {redact(url)!r} is not a database URL; write sqlite:///path/to/file.db or "
                           "postgresql://user@host:port/database (the password from PGPASSWORD or ~/.pgpass).")
    return url


def make_storage(url: str | optuna.storages.BaseStorage, heartbeat_s: int = HEARTBEAT_S):
    """The Optuna storage for ``url`` (one per URL and process, so that every study of a run shares its engine).

    SQLite files get write-ahead logging: each trial writes a dozen user attributes, one transaction each; with
    the default rollback journal and full fsync that was ~35 ms of a ~100 ms candidate, WAL with
    synchronous=NORMAL halves it and stays safe if the process dies. Other URLs go to Optuna's RDBStorage with a
    connection check before use, so that a restarted database server is found again.
    """
    if not isinstance(url, str):
        return url  # a storage object (e.g. optuna.storages.InMemoryStorage)
    if url == "sqlite:///:memory:" or not url.split(":", 1)[0].startswith(("sqlite", "postgresql", "mysql")):
        return url
    return _rdb_storage(url, int(heartbeat_s))


def _with_driver(url: str) -> str:
    """postgresql:// with the driver that is installed: SQLAlchemy 2.1 defaults to psycopg 3, earlier releases to
    psycopg2 (what the ``postgres`` extra installs); a URL that names its driver is left alone."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    for module, dialect in (("psycopg2", "psycopg2"), ("psycopg", "psycopg")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{dialect}://" + url[len("postgresql://"):]
    raise StorageError(f"The storage {redact(url)} needs a PostgreSQL driver; install it with pip install 'kdsearch[postgres]'.")


class _RDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose heartbeats keep quiet when the database goes away. Optuna beats from a thread of its
    own; a storage failure there ended the thread with a traceback on stderr. The main thread meets the same failure at
    its next storage call and says it in one line, so the beat only logs it (no process-wide ``threading.excepthook``)."""

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as exc:
            if not is_storage_failure(exc):
                raise
            logger.debug(f"heartbeat of trial {trial_id} not recorded: {type(exc).__name__}")


@functools.lru_cache(maxsize=8)
def _rdb_storage(url: str, heartbeat_s: int) -> optuna.storages.RDBStorage:
    sqlite = url.startswith("sqlite")
    driver_url = _with_driver(url)
    engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}} if sqlite else {"pool_pre_ping": True}
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are, since Optuna 2.8
                storage = _RDBStorage(driver_url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_s,
                                      grace_period=heartbeat_s * GRACE_PERIODS, **retry_callback(MAX_RETRY))
            break
        except ImportError:
            raise StorageError(f"The storage {redact(url)} needs a database driver that is not installed; install it "
                               "with pip install 'kdsearch[postgres]' (PostgreSQL) or the driver your URL names.") from None
        except Exception as exc:  # the server is down, the URL is wrong — or workers created the tables at once
            if attempt == 2:
                raise unreachable(url, exc) from None
            time.sleep(0.5 + attempt)  # a fresh database: the other process's CREATE TABLE wins, ours then finds them
    if sqlite:
        from sqlalchemy import event

        @event.listens_for(storage.engine, "connect")
        def _pragmas(connection, _record):
            connection.isolation_level = None  # the driver's own BEGIN would be deferred; ours (below) is immediate
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(storage.engine, "begin")
        def _immediate(connection):
            # SQLite ignores SELECT ... FOR UPDATE: two workers could both read a waiting trial as waiting and both
            # take it. BEGIN IMMEDIATE takes the write lock when the transaction starts, so a read-then-write
            # (Optuna's hand-out of a waiting trial) is one step for the other processes.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        storage.engine.dispose()  # connections opened before the listeners existed are not reused
    return storage


def unreachable(url: str, exc: BaseException) -> StorageError:
    """One sentence for a storage that cannot be reached (the driver's first line, the password redacted)."""
    cause = exc  # Optuna wraps the driver's error (the one that says what happened) in StorageInternalError
    while getattr(cause, "orig", None) is None and (cause.__cause__ or cause.__context__) is not None:
        cause = cause.__cause__ or cause.__context__
    first = (str(getattr(cause, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
    parts = _split(url)
    if parts is not None and parts.password:
        first = first.replace(parts.password, "***")
    return StorageError(f"The storage {redact(url)} cannot be reached ({first}); start it (or fix the URL) and run the "
                        "same command again: the run resumes where it stopped.")


def is_storage_failure(exc: BaseException | None) -> bool:
    """An error of the database connection (not of the work itself), anywhere in the chain: Optuna 5 can lose the
    original under an UnboundLocalError of its own when the server goes away in the middle of a trial."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import DBAPIError

    while exc is not None:
        if isinstance(exc, (StorageInternalError, DBAPIError)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def fail_stale_trials(study: optuna.Study, started: str) -> None:
    """Fail (and so queue again) the trials of workers that died: those whose heartbeat stopped (Optuna's own check),
    and those whose process died after taking the trial but before its first heartbeat — Optuna never fails a
    running trial without a heartbeat, so a run waiting for it waited forever. Such a trial has no ``started``
    attribute (what the study's trials write first) long after it began; a live process writes it within one wait
    for the database's lock (``FIRST_WRITE_S``; the write fails after that)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    beat = heartbeat_interval(study)
    if beat is None:
        return
    limit = timedelta(seconds=FIRST_WRITE_S + GRACE_PERIODS * beat)
    now = datetime.now()  # Optuna stamps datetime_start with the local clock of the process that took the trial
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if started in trial.user_attrs or trial.datetime_start is None or now - trial.datetime_start < limit:
            continue
        try:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        except (ValueError, RuntimeError):  # another process failed it first (and queued its retry)
            continue
        logger.info(f"trial {trial.number}: its process died before its first heartbeat; queued again")
        if len(retry_history(trial)) < MAX_RETRY:
            queue_retry(study, trial)


__all__ = ["HEARTBEAT_S", "check_storage", "fail_stale_trials", "is_storage_failure", "make_storage", "redact", "same_storage", "unreachable", "without_password"]
