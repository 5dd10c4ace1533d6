"""Fixtures of the service's tests: a private PostgreSQL server, the service running as a real
process (``popkin serve``), logged-in HTTP clients, and the example patient.

Every database test runs on SQLite and on PostgreSQL. The PostgreSQL server is this test
session's own (``initdb`` in a temporary folder, listening on 127.0.0.1 on a free port), or the
one ``POPKIN_TEST_POSTGRESQL`` names (a URL; CI may start one). When the machine has no
PostgreSQL, the tests fail and say how to get it: they are part of the suite, not optional.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

ADMIN = ("admin", "admin password 1")
PHARMACIST = ("ann", "pharmacist password 1")
VIEWER = ("vic", "viewer password 1")

#: One vancomycin patient: two 1-g infusions over 1 h, 12 h apart, and a level before the
#: third dose (the covariates of the library's vancomycin models).
PATIENT_CSV = (b"ID,TIME,AMT,RATE,DV,EVID,CRCL,WT,AGE,DIAL\n"
               b"1,0,1000,1000,.,1,80,70,60,0\n"
               b"1,12,1000,1000,.,1,80,70,60,0\n"
               b"1,23.5,0,0,12.5,0,80,70,60,0\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                        key=lambda p: int(re.search(r"/(\d+)/bin", p).group(1)))
    return Path(candidates[-1]).parent if candidates else None


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for this session: ``(url of its 'postgres' database, admin url)``."""
    given = os.environ.get("POPKIN_TEST_POSTGRESQL")
    if given:
        yield given
        return
    bindir = _postgres_bin()
    if bindir is None:
        pytest.fail("PostgreSQL is needed for the service's tests (Debian/Ubuntu: apt-get "
                    "install postgresql; or set POPKIN_TEST_POSTGRESQL=postgresql://...)")
    # the server refuses to run as root: as root, run it as the 'postgres' account that
    # the system's package created
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.fail("running the tests as root needs runuser to start PostgreSQL as the "
                        "'postgres' account")
        as_user = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="popkin-pg-"))
    data = folder / "data"
    if as_user:
        shutil.chown(folder, "postgres", "postgres")
    os.chmod(folder, 0o700)
    port = free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                    "--auth=trust", "-E", "UTF8", "--no-instructions"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l",
                    str(folder / "log"), "-w", "-o",
                    f"-h 127.0.0.1 -p {port} -k {folder} -F", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def new_postgres_database(server_url: str) -> str:
    import psycopg

    name = "popkin_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A new, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'service.db'}"
    return new_postgres_database(request.getfixturevalue("postgres_server"))


def add_users(db_url: str) -> None:
    from popkin.service.server import add_account

    for (name, password), role in ((ADMIN, "admin"), (PHARMACIST, "pharmacist"),
                                   (VIEWER, "viewer")):
        add_account(db_url, name, role, password)


class Server:
    """``popkin serve`` in its own process group, on a free port."""

    def __init__(self, db_url: str, workers: int = 1):
        self.db_url, self.workers = db_url, workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self, timeout: float = 120) -> "Server":
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "popkin.cli", "serve", "--db", self.db_url, "--port",
             str(self.port), "--workers", str(self.workers)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"popkin serve exited: {self.output()}")
            try:
                if httpx.get(self.url + "/login", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"popkin serve did not answer in {timeout} s: {self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-3000:]

    def kill(self) -> None:
        """SIGKILL to the server and its workers at once: no clean shutdown of anything."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def browser_login(client: httpx.Client, name: str, password: str) -> str:
    """Log ``client`` in through the login form; returns the session's CSRF token."""
    page = client.get("/login")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)
    response = client.post("/login", data={"name": name, "password": password,
                                           "login_token": token, "next": "/"})
    assert response.status_code == 200 and "Log out" in response.text, response.text[:500]
    return csrf_of(response.text)


def wait_for_job(client, job: int, timeout: float = 300) -> dict:
    """Poll ``/api/v1/jobs/JOB`` until the job is no longer queued or running."""
    deadline = time.monotonic() + timeout
    while True:
        state = client.get(f"/api/v1/jobs/{job}").json()
        if state["status"] not in ("queued", "running"):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job} still {state['status']} after {timeout} s")
        time.sleep(0.2)


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory):
    """A running service on SQLite with the three users, shared by a module's tests."""
    url = f"sqlite:///{tmp_path_factory.mktemp('served') / 'service.db'}"
    add_users(url)
    server = Server(url).start()
    yield server
    server.stop()
