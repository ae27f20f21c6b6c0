"""A throw-away PostgreSQL server for the tests that check the store on PostgreSQL.

``TUNELOOP_TEST_POSTGRES_URL`` (a server URL whose role may create databases) wins; otherwise
a private cluster is started from the PostgreSQL binaries on this machine (``initdb`` +
``pg_ctl``, as the ``postgres`` user when running as root); with neither, those tests skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


class PostgresUnavailable(Exception):
    """PostgreSQL is installed but a private server could not be started here."""


def find_bin_dir() -> Path | None:
    """The newest installed PostgreSQL bin folder with initdb, or None."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    return next((d for d in BIN_DIRS if (d / "initdb").exists()), None)


def _run(*cmd: str) -> None:
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        cmd = ("runuser", "-u", "postgres", "--", *cmd)
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@contextmanager
def postgres_server() -> Iterator[str | None]:
    """Yield a SQLAlchemy URL of a PostgreSQL server (without database name), or None if none."""
    if url := os.environ.get("TUNELOOP_TEST_POSTGRES_URL"):
        yield url.rstrip("/")
        return
    bin_dir = find_bin_dir()
    if bin_dir is None:
        yield None
        return
    root = tempfile.mkdtemp(prefix="tuneloop-pg-")
    os.chmod(root, 0o777)
    data = os.path.join(root, "data")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = f"-p {port} -k {root} -h 127.0.0.1 -F"
    try:
        _run(str(bin_dir / "initdb"), "-D", data, "-U", "tuneloop", "--auth=trust", "-E", "UTF8", "--no-sync")
        _run(str(bin_dir / "pg_ctl"), "-D", data, "-l", os.path.join(root, "log"), "-w", "-o", options, "start")
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise PostgresUnavailable(f"could not start PostgreSQL from {bin_dir}: {detail.strip()[-500:]}") from exc
    try:
        yield f"postgresql+psycopg://tuneloop@127.0.0.1:{port}"
    finally:
        _run(str(bin_dir / "pg_ctl"), "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def create_database(server_url: str, name: str) -> str:
    """Create an empty database on the server and return its URL."""
    import sqlalchemy as sa

    admin = sa.create_engine(f"{server_url}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{server_url}/{name}"
