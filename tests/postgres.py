"""A throwaway PostgreSQL server for tests and benchmarks (Debian's ``postgresql`` package, installed by .ci/run):
a temporary data directory, listening on 127.0.0.1 only, one password-protected superuser. As root, the server
runs as the ``postgres`` system user (PostgreSQL refuses root)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER, PASSWORD = "kdsearch", "s3cret-Pa55word"


def find_binary(name: str) -> str | None:
    """Debian puts initdb and pg_ctl under /usr/lib/postgresql/<version>/bin, not on PATH."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]), reverse=True)
    return candidates[0] if candidates else None


def unavailable_reason() -> str | None:
    """Why no server can be started here (None: it can)."""
    if find_binary("initdb") is None or find_binary("pg_ctl") is None:
        return "PostgreSQL is not installed (apt-get install postgresql; .ci/run does)"
    if os.geteuid() == 0 and (shutil.which("runuser") is None or _uid("postgres") is None):
        return "running as root without a 'postgres' system user to run the server as"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "the psycopg2 driver is not installed (pip install 'kdsearch[postgres]')"
    return None


def _uid(user: str) -> int | None:
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="kdsearch-pg-"))
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.port = _free_port()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self._as, *cmd], check=True, capture_output=True, timeout=120)

    def init(self) -> PostgresServer:
        os.chmod(self.root, 0o755)
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD)
        if self._as:
            for path in (self.root, pwfile):
                shutil.chown(path, "postgres")
        self._run(find_binary("initdb"), "-D", str(self.data), "-U", USER, "--auth=scram-sha-256",
                  f"--pwfile={pwfile}", "-E", "UTF8")
        pwfile.unlink()
        return self.start()

    def start(self) -> PostgresServer:
        # loopback only; socket in our folder; commits acknowledged before the WAL flush, like SQLite's WAL + NORMAL
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c synchronous_commit=off -c max_connections=200"
        self._run(find_binary("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-o", options, "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run(find_binary("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres", password: bool = True) -> str:
        auth = f"{USER}:{PASSWORD}" if password else USER
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def new_database(self, name: str) -> str:
        """A fresh database for one test or one benchmark case; its URL (with the password)."""
        import psycopg2

        conn = psycopg2.connect(self.url())
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except Exception:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
