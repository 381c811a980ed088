"""A private PostgreSQL cluster for tests: a temporary data directory, a free localhost port, password auth.

``initdb`` and ``pg_ctl`` refuse to run as root, so as root the cluster is created and run as ``nobody`` (via
``runuser``) in a directory that user owns; as anyone else, as that user. Stopped and deleted by ``stop``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

SUPERUSER = "deepslim"
RUN_AS = "nobody"


def find_bin_dir() -> Path | None:
    """The newest installed PostgreSQL server's binaries (Debian: /usr/lib/postgresql/N/bin), or those on PATH."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if dirs:
        return Path(dirs[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="deepslim-pg-", dir="/tmp"))
        self.password = secrets.token_hex(8)
        self.port = free_port()
        self.as_root = os.geteuid() == 0

    def _run(self, *args: str, timeout: float = 60) -> None:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", RUN_AS, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if proc.returncode:
            raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")

    def start(self) -> None:
        if self.as_root:
            os.chmod(self.root, 0o755)
            shutil.chown(self.root, RUN_AS)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        if self.as_root:
            shutil.chown(pwfile, RUN_AS)
        data = self.root / "data"
        self._run("initdb", "-D", str(data), "-U", SUPERUSER, "--pwfile", str(pwfile), "--auth-host=scram-sha-256",
                  "--auth-local=trust", "-E", "UTF8", "--no-sync")  # fmt: skip
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        self._run("pg_ctl", "-D", str(data), "-o", opts, "-l", str(self.root / "log"), "-w", "-t", "60", "start")

    def url(self, db: str = "postgres", *, password: str | None = None, port: int | None = None) -> str:
        pw = self.password if password is None else password
        return f"postgresql://{SUPERUSER}:{pw}@127.0.0.1:{port or self.port}/{db}"

    def create_database(self, name: str) -> str:
        import psycopg2

        conn = psycopg2.connect(self.url(), connect_timeout=5)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PostgresCluster | str]:
    """A running cluster, or (as a string) why there is none: the tests skip with that reason."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        yield "PostgreSQL server binaries (initdb, pg_ctl) are not installed (Debian: apt-get install postgresql)"
        return
    cluster = PostgresCluster(bin_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
