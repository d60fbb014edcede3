"""Real servers for tests: a throwaway PostgreSQL cluster in a temporary folder on 127.0.0.1.

The history is tested against a real server rather than a mock, because what differs between
SQLite and PostgreSQL (types, integer widths, time zones, constraint timing) only shows on a real one.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests_support import free_port

# Debian's layout (apt-get install postgresql; launch.py test does it); newest major version first
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
# A role that must give a password (every other connection from 127.0.0.1 is trusted)
PASSWORD_ROLE, PASSWORD = "studio_pw", "right-password"


def postgres_bin() -> Path | None:
    """The folder with initdb and pg_ctl, or None when PostgreSQL is not installed."""
    found = [Path(p) for p in glob.glob(PG_BIN_GLOB) if (Path(p) / "initdb").is_file() and (Path(p) / "pg_ctl").is_file()]
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0) if found else None


def missing_reason() -> str | None:
    """Why a server cannot be started here, or None when it can."""
    if postgres_bin() is None:
        return f"PostgreSQL is not installed (no initdb/pg_ctl in {PG_BIN_GLOB}); `python launch.py test` installs it"
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            return "running as root, PostgreSQL must run as another user, and runuser is missing"
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, PostgreSQL must run as the `postgres` user, and there is none"
    return None


class PostgresServer:
    """initdb + pg_ctl start in a temp folder; stop() removes the whole cluster."""

    def __init__(self):
        self.bin = postgres_bin()
        # PostgreSQL refuses to run as root: as root (CI, containers) the cluster belongs to `postgres`
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        # in /tmp itself, not pytest's tmp_path: that sits under a root-only 0700 folder `postgres` cannot enter
        self.root = Path(tempfile.mkdtemp(prefix="studio-pg-"))
        self.data = self.root / "data"
        self.port = 0
        self.startup_s = 0.0

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self.as_user, *command], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr or done.stdout}\n{tail}")

    def start(self) -> PostgresServer:
        began = time.monotonic()
        if self.as_user:
            shutil.chown(self.root, "postgres", "postgres")
        # --no-sync and fsync=off: a test cluster need not survive a power cut, and syncing is most of its cost
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        hba = self.data / "pg_hba.conf"
        # first match wins: the password role is checked, everyone else on 127.0.0.1 is trusted
        hba.write_text(f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n"
                       "host all all 127.0.0.1/32 trust\n")
        for attempt in range(3):  # the free port can be taken between asking and binding
            self.port = free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            try:
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                          "-o", options, "-w", "-t", "60", "start")
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        self.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{PASSWORD}'")
        self.startup_s = time.monotonic() - began
        return self

    def url(self, database: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql+psycopg://{user}{secret}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str) -> None:
        """One statement on the maintenance database, outside a transaction (CREATE/DROP DATABASE need that)."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(sql)

    def create_database(self) -> str:
        name = f"studio_{uuid.uuid4().hex[:12]}"
        self.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        # FORCE: a test that failed may have left a connection open; it must not keep the database alive
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
