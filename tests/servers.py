"""Direct DB-API connections to the test servers, for tests that work past Django."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from typing import Any

import dj_database_url

from tests.settings import MYSQL_URL, POSTGRES_URL

SERVER_URLS = {"postgres": POSTGRES_URL, "mysql": MYSQL_URL}


def server_connection(url: str, database: str | None = None) -> Any:
    """A DB-API connection to the server at ``url`` (a server URL, no database in it)."""
    config = dj_database_url.parse(url)
    options: dict[str, Any] = {
        "host": config.get("HOST"),
        "port": int(config.get("PORT") or 0) or None,
        "user": config.get("USER"),
        "password": config.get("PASSWORD"),
    }
    options = {key: value for key, value in options.items() if value}
    if url.startswith("postgres"):
        import psycopg

        return psycopg.connect(dbname=database or "postgres", autocommit=True, **options)
    import MySQLdb  # type: ignore[import-untyped]

    if database:
        options["database"] = database
    return MySQLdb.connect(charset="utf8mb4", autocommit=True, **options)


def recreate(engine: str, name: str, *, create: bool = True) -> None:
    """Drop the server database ``name`` if it exists, then create it unless told not to."""
    with closing(server_connection(SERVER_URLS[engine])) as connection:
        cursor = connection.cursor()
        cursor.execute(f"DROP DATABASE IF EXISTS {name}")
        if create:
            charset = " CHARACTER SET utf8mb4" if engine == "mysql" else ""
            cursor.execute(f"CREATE DATABASE {name}{charset}")


class Cluster:
    """A PostgreSQL cluster in a directory of its own, run as the postgres user."""

    def __init__(self, directory: str, name: str, port: int) -> None:
        self.directory = directory
        self.data = os.path.join(directory, name)
        self.port = port
        self.url = f"postgres://postgres@127.0.0.1:{port}"
        self.log = os.path.join(directory, f"{name}.log")

    def run(self, program: str, *args: str) -> None:
        command = [*_AS_OWNER, f"{_bindir()}/{program}", *args]
        subprocess.run(command, check=True, capture_output=True)

    def start(self, *settings: str) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        options += "".join(f" -c {setting}" for setting in settings)
        self.run("pg_ctl", "-D", self.data, "-o", options, "-l", self.log, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")


_AS_OWNER = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _bindir() -> str:
    return subprocess.check_output(["pg_config", "--bindir"], text=True).strip()


@contextmanager
def _cluster_directory() -> Iterator[str]:
    # PostgreSQL refuses to run as root: run it as the postgres user then.
    with tempfile.TemporaryDirectory() as directory:
        if _AS_OWNER:
            shutil.chown(directory, "postgres")
        yield directory


@contextmanager
def scratch_postgres(port: int = 5499) -> Iterator[str]:
    """A new, empty PostgreSQL cluster with default settings; yields its server URL."""
    with _cluster_directory() as directory:
        cluster = Cluster(directory, "data", port)
        cluster.run("initdb", "-D", cluster.data, "-A", "trust", "-U", "postgres")
        cluster.start()
        try:
            yield cluster.url
        finally:
            with suppress(subprocess.CalledProcessError):
                cluster.stop("immediate")


@contextmanager
def streaming_replica(primary_port: int, replica_port: int) -> Iterator[tuple[Cluster, Cluster]]:
    """A new primary cluster and a streaming replica of it made with pg_basebackup."""
    with _cluster_directory() as directory:
        primary = Cluster(directory, "primary", primary_port)
        replica = Cluster(directory, "replica", replica_port)
        primary.run("initdb", "-D", primary.data, "-A", "trust", "-U", "postgres")
        primary.start("max_prepared_transactions=8")
        try:
            replica.run(
                "pg_basebackup", "-h", "127.0.0.1", "-p", str(primary_port), "-U", "postgres",
                "-D", replica.data, "--write-recovery-conf", "--wal-method=stream",
                "--checkpoint=fast",
            )  # fmt: skip
            replica.start("max_prepared_transactions=8")
            yield primary, replica
        finally:
            for cluster in (replica, primary):
                with suppress(subprocess.CalledProcessError):
                    cluster.stop("immediate")
