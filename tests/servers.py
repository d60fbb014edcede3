"""Real servers for tests: a throwaway PostgreSQL cluster and redis-server on 127.0.0.1, farm workers.

The history is tested against a real server rather than a mock, because what differs between
SQLite and PostgreSQL (types, integer widths, time zones, constraint timing) only shows on a real one.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
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


def redis_missing_reason() -> str | None:
    if not shutil.which("redis-server"):
        return "redis-server is not installed; `python launch.py test` installs it (Debian's redis-server)"
    return None


class RedisServer:
    """redis-server on 127.0.0.1 on a free port, its files in a temp folder; restart() keeps its data."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="studio-redis-"))
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        # appendonly: a restarted broker keeps the queue (what a farm's Redis is configured to do)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no"],
            stdout=open(self.root / "server.log", "ab"), stderr=subprocess.STDOUT)
        import redis

        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis(host="127.0.0.1", port=self.port).ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start: {(self.root / 'server.log').read_text()[-2000:]}")
                time.sleep(0.05)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def halt(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def restart(self) -> None:
        self.halt()
        self.start()

    def stop(self) -> None:
        try:
            self.halt()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


REPO = Path(__file__).resolve().parents[1]


class Farm:
    """A farm on this machine: the UI side's services (farm=True) and `studio worker` processes."""

    def __init__(self, root: Path, broker: str, database: str, model_dir: Path, routing: bool = True):
        self.root, self.broker, self.database = root, broker, database
        self.data_dir, self.models_dir = root / "data", root / "models"
        self.workers: dict[str, subprocess.Popen] = {}
        from studio.app import build
        from studio.settings import Settings

        self.settings = Settings(data_dir=self.data_dir, models_dir=self.models_dir, device="cpu", default_model="tiny",
                                 preview_every=0, farm=True, broker_url=broker, database_url=database,
                                 annotators_dir=root / "annotators", farm_routing=routing)
        self.services = build(self.settings)
        self.services.registry.add(str(model_dir), name="tiny")  # in the shared data folder: workers see it

    def add_model(self, model_dir: Path, name: str) -> None:
        self.services.registry.add(str(model_dir), name=name)

    def start_worker(self, name: str, **settings: str) -> subprocess.Popen:
        """A `studio worker` process; settings are STUDIO_* values for it (preview_every="2", ...)."""
        env = dict(os.environ, OMP_NUM_THREADS="1", STUDIO_DEVICE="cpu", STUDIO_DEFAULT_MODEL="tiny",
                   STUDIO_PREVIEW_EVERY="0", STUDIO_ANNOTATORS_DIR=str(self.root / "annotators"),
                   STUDIO_FARM_VISIBILITY_TIMEOUT_S="10")
        env.update({f"STUDIO_{key.upper()}": str(value) for key, value in settings.items()})
        log = open(self.root / f"{name}.log", "ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "studio", "worker", "--broker", self.broker, "--database-url", self.database,
             "--data-dir", str(self.data_dir), "--models-dir", str(self.models_dir), "--name", name,
             "--loglevel", "INFO"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.workers[name] = process
        return process

    def kill_worker(self, name: str) -> None:
        """kill -9 the whole worker: its main process and its pool process, as a machine that loses power."""
        process = self.workers[name]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        for process in self.workers.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.workers.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        self.services.close()


