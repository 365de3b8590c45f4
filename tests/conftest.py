"""Test configuration: make the repository's packages importable without installing them, and a
throw-away PostgreSQL server for the tests that run against both database backends.

Fixtures:
    postgres_server  (session) a PostgreSQL cluster initialised in a temporary folder, listening
                     on a free loopback port; stopped and removed at the end of the session.
                     Skips (with the reason) where no server binary, no driver, or no user to run
                     it as exists. As root, initdb and pg_ctl run as the `postgres` user.
    pg_url           a fresh, empty database on that server: its SQLAlchemy URL.
    db_url           parametrized over both backends: a new SQLite file, then a new PostgreSQL
                     database (skipped where there is no server).
"""
import atexit
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _postgres_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: $PDSPACE_PG_BIN, PATH, else the newest
    /usr/lib/postgresql/<version>/bin."""
    candidates = [os.environ.get("PDSPACE_PG_BIN")]
    on_path = shutil.which("pg_ctl")
    candidates.append(str(Path(on_path).parent) if on_path else None)
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                         if Path(p).parent.name.isdigit() else 0, reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One throw-away cluster: start() initialises and starts it, stop() stops and removes it."""

    def __init__(self, bindir: Path, as_user: str | None):
        self.bindir, self.as_user = bindir, as_user
        self.root = Path(tempfile.mkdtemp(prefix="pdspace-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.running = False

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self.as_user:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def start(self) -> None:
        if self.as_user:
            shutil.chown(self.root, user=self.as_user)
        res = self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        if res.returncode != 0:
            raise RuntimeError(f"initdb failed: {res.stderr.strip()[-500:]}")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        res = self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"),
                        "-w", "-t", "60", "start")
        if res.returncode != 0:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {res.stderr.strip()[-300:]} {log[-500:]}")
        self.running = True

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
            self.running = False
        shutil.rmtree(self.root, ignore_errors=True)


def _skip_reason() -> str | None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "no PostgreSQL driver (pip install '.[postgres]')"
    if _postgres_bin() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl) on this machine"
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root without runuser to start the server as `postgres`"
    return None


@pytest.fixture(scope="session")
def postgres_server():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    server = PostgresServer(_postgres_bin(), "postgres" if os.geteuid() == 0 else None)
    atexit.register(server.stop)  # also when the session is interrupted
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        server.stop()
        pytest.skip(f"the PostgreSQL test server did not start: {exc}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres_server) -> str:
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """An empty database on each backend (the schema is not created)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return request.getfixturevalue("postgres_server").create_database()
