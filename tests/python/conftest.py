"""Fixtures of the Python conformance suite: a real engramd on a free loopback port and
a temporary data directory, reached over TCP or its Unix socket."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import capnp
import pytest

REPOSITORY = Path(__file__).resolve().parents[2]


def engramd_binary() -> Path:
    configured = os.environ.get("ENGRAMD_BIN")
    path = Path(configured) if configured else REPOSITORY / "target" / "debug" / "engramd"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build --workspace --bins` first (scripts/test does)")
    return path


def engram_cli() -> str:
    """The CLI `cargo build --workspace --bins` built (scripts/test does), or ENGRAM_BIN."""
    configured = os.environ.get("ENGRAM_BIN")
    path = Path(configured) if configured else REPOSITORY / "target" / "debug" / "engram"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build --workspace --bins` first (scripts/test does)")
    return str(path)


@dataclass
class Node:
    tcp: str
    unix: str
    data: Path
    process: subprocess.Popen

    @property
    def admin_key(self) -> Path:
        return self.data / "admin.key"


@contextmanager
def _engramd(tmp_path: Path, name: str, *options: str):
    """Starts engramd on a free loopback port with its data in ``tmp_path/name`` and its
    log in ``tmp_path/{name}.log``; yields the ready line's fields, the data directory
    and the process; stops it with SIGTERM, which must exit 0."""
    data = tmp_path / name
    log_path = tmp_path / f"{name}.log"
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [str(engramd_binary()), "--data", str(data), "--listen", "127.0.0.1:0", *options],
        stdout=subprocess.PIPE,
        stderr=log,
    )
    ready = process.stdout.readline().decode()
    if not ready.startswith("engramd ready "):
        process.kill()
        pytest.fail(f"engramd did not start: {log_path.read_text()}")
    yield dict(part.split("=", 1) for part in ready.split()[2:]), data, process
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0, log_path.read_text()
    log.close()


@pytest.fixture
def node(tmp_path: Path):
    with _engramd(tmp_path, "data") as (fields, data, process):
        yield Node(tcp=fields["tcp"], unix="unix:" + fields["unix"], data=data, process=process)


@pytest.fixture(params=["tcp", "unix"])
def address(request, node: Node) -> str:
    """The node's address over each transport in turn."""
    return node.tcp if request.param == "tcp" else node.unix


def run(coroutine):
    """Runs a coroutine the way pycapnp 2.x needs: inside capnp.run on asyncio."""
    return asyncio.run(capnp.run(coroutine))


@pytest.fixture
def tls_node(tmp_path: Path):
    """A node started with --tls: TLS 1.3 on TCP, its key in the ready line."""
    with _engramd(tmp_path, "tls-data", "--tls", "--no-socket") as (fields, data, _):
        yield TlsNode(tcp=fields["tcp"], node_key=bytes.fromhex(fields["node_key"]), data=data)


@dataclass
class TlsNode:
    tcp: str
    node_key: bytes
    data: Path

    @property
    def admin_key(self) -> Path:
        return self.data / "admin.key"


@pytest.fixture
def nats_url(tmp_path: Path):
    """A nats-server with JetStream on a free loopback port, its store in ``tmp_path``:
    NATS_SERVER_BIN (scripts/test provides one), else the one on PATH."""
    binary = os.environ.get("NATS_SERVER_BIN", "nats-server")
    directory = tmp_path / "nats"
    directory.mkdir()
    process = subprocess.Popen(
        [binary, "--jetstream", "--addr", "127.0.0.1", "--port", "-1",
         "--store_dir", str(directory / "jetstream"), "--ports_file_dir", str(directory),
         "--log", str(directory / "nats.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ports = directory / f"nats-server_{process.pid}.ports"
    deadline = time.monotonic() + 10
    while not ports.exists() or not ports.read_text().strip():
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("nats-server did not start: run the tests with scripts/test, or set NATS_SERVER_BIN")
        time.sleep(0.01)
    yield json.loads(ports.read_text())["nats"][0]
    process.kill()
    process.wait()


@contextmanager
def _fleet_node(tmp_path: Path, nats_url: str, name: str):
    with _engramd(tmp_path, name, "--nats", nats_url, "--no-socket") as (fields, data, process):
        yield Node(tcp=fields["tcp"], unix="", data=data, process=process)


@pytest.fixture
def fleet_node(tmp_path: Path, nats_url: str):
    """A node in a fleet of its own (``--nats``), reached over TCP."""
    with _fleet_node(tmp_path, nats_url, "fleet-data") as node:
        yield node


@pytest.fixture
def fleet_pair(tmp_path: Path, nats_url: str):
    """Two nodes of one fleet, the first started first (its admin key is the fleet's)."""
    with _fleet_node(tmp_path, nats_url, "fleet-a") as first, _fleet_node(tmp_path, nats_url, "fleet-b") as second:
        yield first, second
