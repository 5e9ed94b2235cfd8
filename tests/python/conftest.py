"""Starts real `trendflow run` processes on free loopback ports for the client tests."""

import json
import os
import re
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROWS = 20_000
# The categories the embedded defaults generate beside the products: a stream of their own.
GENERATED_CATEGORIES = 248


def trendflow_bin() -> str:
    path = os.environ.get("TRENDFLOW_BIN") or str(REPO / "target" / "debug" / "trendflow")
    if not Path(path).exists():
        raise RuntimeError(f"trendflow binary not found at {path}: build it (scripts/test.sh does) or set TRENDFLOW_BIN")
    return path


def free_port() -> int:
    """A loopback port nothing listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def report(test: str, figures: dict) -> None:
    """Appends a test's figures to reliability.ndjson in TRENDFLOW_ARTIFACTS (printed by scripts/test.sh)."""
    directory = Path(os.environ.get("TRENDFLOW_ARTIFACTS", REPO / "target" / "artifacts"))
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "reliability.ndjson", "a") as out:
        out.write(json.dumps({"test": test, "figures": figures}) + "\n")


def comparable(value):
    """A value as JSON and Arrow both render it: floats rounded to 1e-9, times as ISO text."""
    if isinstance(value, float):
        return round(value, 9)
    if hasattr(value, "isoformat"):
        return value.isoformat().replace("+00:00", "Z")
    return value


class Job:
    """A running `trendflow run` with its Flight SQL address and state directory."""

    def __init__(self, *extra_args: str, rows: int = ROWS, max_rows: int = 4000):
        self.tmp = tempfile.TemporaryDirectory()
        self.state = Path(self.tmp.name) / "state"
        args = [trendflow_bin(), "run", "--state", str(self.state), "--gen-rows", str(rows), "--gen-days", "2", "--max-rows", str(max_rows),
                "--checkpoint-interval-ms", "0", "--flight-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", *extra_args]
        self.process = subprocess.Popen(args, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.uri, self.status_url = self._read_addresses()

    def _read_addresses(self) -> tuple[str, str]:
        """The Flight SQL URI and the status endpoint's base URL, as printed at start."""
        deadline = time.monotonic() + 60
        seen, flight, status = [], None, None
        while time.monotonic() < deadline and not (flight and status):
            line = self.process.stderr.readline()
            if not line:
                break
            seen.append(line)
            if match := re.search(r"Flight SQL listening on (grpc(?:\+tls)?://[\d.]+:\d+)", line):
                flight = match.group(1)
            if match := re.search(r"status endpoint on (http://[\d.]+:\d+)", line):
                status = match.group(1)
        if flight and status:
            return flight, status
        self.stop()
        raise RuntimeError("trendflow did not report its Flight SQL and status addresses:\n" + "".join(seen))

    def query(self, sql: str) -> list[dict]:
        """`trendflow query --format json` over the job's persisted views."""
        out = subprocess.run([trendflow_bin(), "query", sql, "--state", str(self.state), "--format", "json"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout
        return [json.loads(line) for line in out.splitlines() if line]

    def wait_drained(self) -> None:
        """Waits until every generated record is reflected in the persisted views."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                rows = self.query("SELECT SUM(products) AS n FROM category_distribution")
                if rows and rows[0].get("n") == ROWS:
                    return
            except subprocess.CalledProcessError:
                pass
            time.sleep(0.3)
        raise RuntimeError("the job did not drain its source within 120 s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.tmp.cleanup()


@pytest.fixture(scope="session")
def job():
    job = Job()
    job.wait_drained()
    yield job
    job.stop()


@pytest.fixture(scope="session")
def auth_job():
    job = Job("--auth", "basic:alice:s3cret")
    yield job
    job.stop()


@pytest.fixture(scope="session")
def token_job(tmp_path_factory):
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text("# bearer tokens of the BI clients\ndashboard-7f3a\n")
    job = Job("--auth", f"token-file:{tokens}")
    yield job
    job.stop()


@pytest.fixture(scope="session")
def tls_job(tmp_path_factory):
    """A job serving over TLS with a self-signed certificate for 127.0.0.1 (made by the openssl CLI)."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    job = Job("--tls-cert", str(cert), "--tls-key", str(key))
    job.cert = cert.read_text()
    yield job
    job.stop()


@pytest.fixture(scope="session")
def limited_job():
    job = Job("--query-memory-mb", "16", "--query-timeout-s", "30")
    job.wait_drained()
    yield job
    job.stop()
