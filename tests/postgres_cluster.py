"""A throwaway PostgreSQL cluster for the tests: ``initdb`` in a temporary folder, started on a
free loopback port, stopped and deleted when the test session ends.

The cluster listens on 127.0.0.1 only (its unix socket sits in the same temporary folder) and
asks TCP clients for a password (``scram-sha-256``), so the tests see the password handling a
real deployment has. ``initdb`` refuses to run as root; as root the cluster is made and run by
the ``postgres`` system user when there is one, else by ``nobody`` (``subprocess``'s
``user=``/``group=``), so it works on a developer machine and on a fresh CI machine alike.

PYTEST_DONT_REWRITE: imported by conftest.py.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

USER = "rankguide"
PASSWORD = "pg-Zq81xK/s3cret"
"""The cluster's password: a '/' in it checks that URLs are quoted and scrubbed correctly."""


def find_initdb() -> Path | None:
    """``initdb`` on the PATH, else in Debian's versioned folders; ``None`` if not installed."""
    found = shutil.which("initdb")
    if found is None:
        candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        found = candidates[-1] if candidates else None
    return Path(found).resolve() if found else None


def _run_as() -> pwd.struct_passwd | None:
    """The account to run PostgreSQL as when this process is root (it refuses root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, and neither a 'postgres' nor a 'nobody' account exists")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresCluster:
    """One PostgreSQL cluster; use it as a context manager.

    Attributes:
        url: ``postgresql://rankguide:PASSWORD@127.0.0.1:PORT/postgres``.
        port: the loopback port it listens on.
    """

    def __init__(self, initdb: Path) -> None:
        self.bin = initdb.parent
        self.account = _run_as()
        # /tmp, not pytest's folders: those are private to the user running the tests.
        self.folder = Path(tempfile.mkdtemp(prefix="rankguide-pg-", dir="/tmp"))
        self.data = self.folder / "data"
        self.port = 0
        self.url = ""

    def _run(self, *argv: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        account = {}
        if self.account is not None:
            account = {"user": self.account.pw_uid, "group": self.account.pw_gid}
        return subprocess.run(
            [str(a) for a in argv],
            cwd=self.folder,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
            **account,
            **kwargs,
        )

    def start(self) -> None:
        """``initdb`` the cluster and start it; raise with its log when it does not come up."""
        if self.account is not None:
            os.chown(self.folder, self.account.pw_uid, self.account.pw_gid)
        password_file = self.folder / "password"
        password_file.write_text(PASSWORD + "\n", encoding="utf-8")
        if self.account is not None:
            os.chown(password_file, self.account.pw_uid, self.account.pw_gid)
        made = self._run(
            self.bin / "initdb",
            "-D",
            self.data,
            "-U",
            USER,
            f"--pwfile={password_file}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "-N",  # no fsync: the cluster lives for one test session
        )
        password_file.unlink()
        if made.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{made.stdout}\n{made.stderr}")
        for _ in range(3):  # the free port can be taken between probing and binding
            self.port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} "
                "-c fsync=off -c full_page_writes=off -c max_connections=60"
            )
            started = self._run(
                self.bin / "pg_ctl", "-D", self.data, "-l", self.folder / "log", "-w",
                "-t", "60", "-o", options, "start",
            )  # fmt: skip
            if started.returncode == 0:
                self.url = f"postgresql://{USER}:{quote(PASSWORD, safe='')}@127.0.0.1:{self.port}"
                self.url += "/postgres"
                return
            time.sleep(0.2)
        log = (self.folder / "log").read_text(errors="replace")
        raise RuntimeError(f"PostgreSQL did not start:\n{started.stderr}\n{log[-3000:]}")

    def stop(self) -> None:
        """Stop the server at once (the data is thrown away) and delete the folder."""
        if self.data.exists():
            self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)

    def database_url(self, name: str) -> str:
        """A new, empty database on the cluster, as a URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def __enter__(self) -> PostgresCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
