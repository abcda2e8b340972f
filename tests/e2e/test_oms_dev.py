"""`oms dev` (what `make run` runs) as a user runs it: one process tree, HTTP, Ctrl-C, restart
with an order left half-way that carries on.

This starts the product's own embedded Temporal dev server (persisted to a file), which is the
point: it proves orders survive a restart of `make run`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.tokens import issue_token
from tests.api.conftest import free_port

OMS = str(Path(sys.executable).parent / "oms")
SECRET = "e2e-secret-that-is-long-enough-for-hs256"


class DevProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.base = f"http://127.0.0.1:{env['OMS_API_PORT']}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [OMS, "dev"], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"oms dev did not become healthy:\n{self.log.read_text()}")

    def interrupt(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=30)

    def call(self, user: str, method: str, path: str, body: Any = None) -> httpx.Response:
        token = issue_token(user, SECRET, timedelta(minutes=5))
        return httpx.request(
            method,
            self.base + path,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[DevProcess]:
    env = {
        **os.environ,
        "OMS_DATA_DIR": str(tmp_path / "state"),
        "OMS_API_PORT": str(free_port()),
        "OMS_TEMPORAL_PORT": str(free_port()),
        "OMS_TEMPORAL_UI_PORT": str(free_port()),
        # Its own metrics listener, so a running `make run` or another suite never collides.
        "OMS_METRICS_PORT": str(free_port()),
        "OMS_JWT_SECRET": SECRET,
        "OMS_SIMULATOR_FILL_DELAY_SECONDS": "0.05",
        "OMS_BACK_OFFICE_CONFIRM_DELAY_SECONDS": "0.05",
    }
    env.pop("OMS_DATABASE_URL", None)
    process = DevProcess(env, tmp_path / "dev.log")
    yield process
    if process.process is not None and process.process.poll() is None:
        process.process.kill()


def wait_for(dev: DevProcess, order_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        order: dict[str, Any] = dev.call("alice", "GET", f"/orders/{order_id}").json()
        if order["status"] == status:
            return order
        time.sleep(0.1)
    raise AssertionError(f"order stayed {order['status']}")


def test_make_run_serves_the_story_and_keeps_orders_across_restarts(dev: DevProcess) -> None:
    dev.start()
    body = {
        "client_order_id": "e2e-1",
        "fund": "fund-alpha",
        "symbol": "MSFT",
        "side": "buy",
        "quantity": 300,
    }
    created = dev.call("alice", "POST", "/orders", body)
    assert created.status_code == 201, created.text
    order_id = created.json()["order_id"]
    assert (
        dev.call("dana", "POST", f"/orders/{order_id}/approve", {"comment": "ok"}).status_code
        == 200
    )
    assert dev.call("tom", "POST", f"/orders/{order_id}/release", {}).status_code == 200
    settled = wait_for(dev, order_id, "settled")
    ui = httpx.get(
        f"http://127.0.0.1:{dev.env['OMS_TEMPORAL_UI_PORT']}/", timeout=10, follow_redirects=True
    )
    assert ui.status_code == 200  # the Temporal web UI is served beside the OMS
    assert settled["allocations"][0]["account"] == "alpha-main"  # the fund's default account
    # A second order is left half-way, approved but not released, across the restart.
    waiting = dev.call("alice", "POST", "/orders", {**body, "client_order_id": "e2e-2"}).json()
    assert dev.call("dana", "POST", f"/orders/{waiting['order_id']}/approve", {}).status_code == 200
    assert dev.interrupt() == 0
    assert "OMS stopped." in dev.log.read_text()

    # The ports are free again (for a server, which binds with SO_REUSEADDR past the closed
    # connections' TIME_WAIT) and the order is still there after a restart.
    for port in (dev.env["OMS_API_PORT"], dev.env["OMS_TEMPORAL_PORT"]):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", int(port)))
    dev.start()
    again = dev.call("alice", "GET", f"/orders/{order_id}")
    assert again.status_code == 200 and again.json()["status"] == "settled"
    assert (
        dev.call("alice", "POST", "/orders", body).status_code == 200
    )  # same order, not a new one
    # The order that was waiting carries on where it was.
    assert dev.call("tom", "POST", f"/orders/{waiting['order_id']}/release", {}).status_code == 200
    resumed = wait_for(dev, waiting["order_id"], "settled")
    assert [g["user"] for g in resumed["approvals"]["given"]] == ["dana"]
    assert dev.interrupt() == 0


def test_a_taken_port_is_a_one_line_error(dev: DevProcess) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(dev.env["OMS_API_PORT"])))
        squatter.listen()
        result = subprocess.run(
            [OMS, "dev"], env=dev.env, capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: port {dev.env['OMS_API_PORT']} on 127.0.0.1 is already in use; set OMS_API_PORT to another port"
    )


def _dev_server_pid(dev: DevProcess) -> int:
    state = Path(dev.env["OMS_DATA_DIR"])
    return int((state / "temporal.pid").read_text())


def _gone(pid: int, within: float = 15) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A child that died is a zombie until reaped; its parent (killed) no longer reaps it.
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return True
        time.sleep(0.1)
    return False


def test_a_killed_oms_dev_takes_its_dev_server_along_and_starts_again(dev: DevProcess) -> None:
    """kill -9 of `oms dev` left the dev server holding its port: the next start failed."""
    dev.start()
    created = dev.call(
        "alice",
        "POST",
        "/orders",
        {
            "client_order_id": "e2e-k",
            "fund": "fund-alpha",
            "symbol": "MSFT",
            "side": "buy",
            "quantity": 100,
        },
    )
    assert created.status_code == 201, created.text
    server = _dev_server_pid(dev)
    assert dev.process is not None
    dev.process.kill()
    dev.process.wait(timeout=10)
    assert _gone(server), "the dev server outlived a killed oms dev"
    dev.start()
    again = dev.call("alice", "GET", f"/orders/{created.json()['order_id']}")
    assert again.status_code == 200 and again.json()["status"] == "pending_approval"
    assert dev.interrupt() == 0
    assert not (Path(dev.env["OMS_DATA_DIR"]) / "temporal.pid").exists()
