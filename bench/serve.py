"""One OMS process for `python -m bench.lifecycle --processes`: the API, a queue's worker, or the simulators.

The production shape (docker-compose.yml) on one machine: the API and each worker in a process
of its own, each with its own GIL. Settings come from OMS_* variables, as for `oms api` and
`oms worker`; the benchmark's runner and experiments apply here as in its own process. The API
logs at warning level, as under `oms dev`, so the two modes differ only in their processes.

Run: `python -m bench.serve {api,orders,back-office,simulators} [--runner R] [--experiment NAME ...]`
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence

from temporalio.contrib.pydantic import pydantic_data_converter

from bench import experiments


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve")
    parser.add_argument("role", choices=("api", "orders", "back-office", "simulators"))
    parser.add_argument("--runner", choices=("sandbox", "unsandboxed"), default="sandbox")
    parser.add_argument(
        "--experiment", action="append", default=[], choices=sorted(experiments.EXPERIMENTS)
    )
    args = parser.parse_args(argv)
    experiments.apply(args.experiment)
    # The workers built below pick the runner up; the returned one is the references'.
    experiments.use_runner(args.runner, pydantic_data_converter)

    import uvicorn

    from api.app import create_app
    from config import Settings
    from worker import run_event_loop, run_workers, settle_garbage_collector

    settings = Settings()
    if args.role == "api":
        settle_garbage_collector()  # as `oms api` does
        uvicorn.run(
            create_app(settings),
            host=settings.api_host,
            port=settings.api_port,
            log_level="warning",
        )
        return 0
    queues = [] if args.role == "simulators" else [args.role]
    with contextlib.suppress(KeyboardInterrupt):
        run_event_loop(run_workers(settings, queues, simulate=args.role == "simulators"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
