"""The `oms` command: dev runner, workers, API, tokens, and order commands for scripts and people."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import uuid
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx

from config import Settings, UnsafeSettingsError

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """Parse '90s', '15m', '8h' or '2d'."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 30m, 8h, 2d)")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    from api.auth import Authorizer
    from api.tokens import token_for

    if not Authorizer(settings.policies_dir).is_known_user(args.user):
        print(
            f"error: {args.user} is not a user known to the policy ({settings.policies_dir / 'policy.csv'})",
            file=sys.stderr,
        )
        return 2
    ttl = args.ttl or timedelta(seconds=settings.jwt_default_ttl_seconds)
    if ttl > settings.jwt_max_ttl:
        print(
            f"error: a token may live at most {settings.jwt_max_ttl} (OMS_JWT_MAX_TTL); "
            f"--ttl {ttl} is longer",
            file=sys.stderr,
        )
        return 2
    print(token_for(settings, args.user, ttl))
    return 0


def chat_banner(settings: Settings) -> list[str]:
    """Return `oms dev`'s lines on chat-ops: where Slack posts, the secret, the webhook."""
    api = settings.resolved_api_url
    default_secret = Settings.model_fields["slack_signing_secret"].default
    secret = (
        f"{settings.slack_signing_secret}   (development only; OMS_SLACK_SIGNING_SECRET)"
        if settings.slack_signing_secret == default_secret
        else "from OMS_SLACK_SIGNING_SECRET"
    )
    webhook = (
        "posted to OMS_CHAT_WEBHOOK_URL"
        if settings.chat_webhook_url
        else "not sent: OMS_CHAT_WEBHOOK_URL is not set"
    )
    return [
        "Chat-ops (Slack-compatible)",
        f"  Slash command   POST {api}/chat/slack/commands   (/oms approve|reject|show|inbox)",
        f"  Interactivity   POST {api}/chat/slack/actions",
        f"  Signing secret  {secret}",
        f"  Notifications   {webhook}",
        "  Slack app       put the API behind a public https URL, create the app from the",
        "                  manifest in README.md (Chat-ops) with that URL, then restart with",
        "                  OMS_SLACK_SIGNING_SECRET set to the app's Signing Secret",
    ]


def _cmd_dev(_: argparse.Namespace, settings: Settings) -> int:
    from devserver import PortInUseError, run_dev
    from worker import run_event_loop

    print("\n".join(chat_banner(settings)), flush=True)
    try:
        run_event_loop(run_dev(settings))
    except PortInUseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from worker import QUEUES, run_event_loop, run_workers

    queues = [args.queue] if args.queue else list(QUEUES)
    with contextlib.suppress(KeyboardInterrupt):
        run_event_loop(run_workers(settings, queues))
    return 0


def _cmd_simulators(_: argparse.Namespace, settings: Settings) -> int:
    from worker import run_event_loop, run_workers

    with contextlib.suppress(KeyboardInterrupt):
        run_event_loop(run_workers(settings, [], simulate=True))
    return 0


def _verify_archive(path: str) -> int:
    """Verify an `oms audit export` file with nothing but its own lines."""
    from db import audit

    try:
        with open(path) as archive:
            rows = [audit.row_from_json(json.loads(line)) for line in archive if line.strip()]
    except (OSError, ValueError) as exc:
        print(f"error: {path}: {exc}", file=sys.stderr)
        return 2
    problems = audit.verify_archive(rows)
    for problem in problems:
        print(f"{problem.fund}: row {problem.position}: {problem.problem}")
    if not problems:
        funds = len({row.fund for row in rows})
        print(f"{len(rows)} rows of {funds} fund(s) verify")
    return 1 if problems else 0


def _cmd_audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    from db import audit
    from db.engine import create_schema, make_engine, session_factory

    if args.archive:
        return _verify_archive(args.archive)
    engine = make_engine(settings.resolved_database_url)
    create_schema(engine)  # a read model older than the audit log has empty chains
    with session_factory(engine)() as session:
        problems = audit.verify(session, args.fund or None)
    engine.dispose()
    for problem in problems:
        print(f"{problem.fund}: row {problem.position}: {problem.problem}")
    if not problems:
        print("every audit chain verifies")
    return 1 if problems else 0


def parse_instant(text: str) -> datetime:
    """Parse an ISO 8601 instant that carries its offset ('2026-01-02T00:00:00Z')."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if value.utcoffset() is None:
        raise argparse.ArgumentTypeError(f"{text!r} carries no offset (add Z or +00:00)")
    return value


def _cmd_audit_export(args: argparse.Namespace, settings: Settings) -> int:
    from db import audit
    from db.engine import create_schema, make_engine, session_factory

    if args.end <= args.start:
        print("error: --to must be after --from", file=sys.stderr)
        return 2
    engine = make_engine(settings.resolved_database_url)
    create_schema(engine)
    count = 0
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(args.out, "w")) if args.out else sys.stdout
        session = stack.enter_context(session_factory(engine)())
        for row in audit.export_rows(session, args.start, args.end, args.fund or None):
            out.write(json.dumps(audit.row_to_json(row), sort_keys=True, default=str) + "\n")
            count += 1
    engine.dispose()
    if args.out:
        print(f"{count} audit rows written to {args.out}", file=sys.stderr)
    return 0


def _cmd_load_demo_data(_: argparse.Namespace, settings: Settings) -> int:
    from db.demo import load_demo_data
    from db.engine import create_schema, make_engine, session_factory

    engine = make_engine(settings.resolved_database_url)
    create_schema(engine)
    with session_factory(engine)() as session:
        load_demo_data(session)
    engine.dispose()
    print(f"demo funds, accounts and instruments loaded into {engine.url.render_as_string()}")
    return 0


def _cmd_api(_: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from api.app import create_app
    from api.metrics import MetricsPortInUseError, serve_metrics

    app = create_app(settings)
    # The app's Temporal client encrypts payloads: refuse bad or missing keys here, as
    # `error: ...`, rather than as a traceback from uvicorn's start-up.
    settings.payload_codec()
    from worker import settle_garbage_collector

    settle_garbage_collector()
    # Metrics never leave on the API port: their own listener (OMS_METRICS_HOST/PORT).
    try:
        with serve_metrics(settings, app.state.metrics):
            uvicorn.run(app, host=settings.api_host, port=settings.api_port)
    except MetricsPortInUseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _call(
    settings: Settings, user: str, method: str, path: str, body: dict[str, Any] | None = None
) -> int:
    from api.tokens import token_for

    token = token_for(settings, user, timedelta(minutes=5))
    try:
        response = httpx.request(
            method,
            settings.resolved_api_url + path,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
    except httpx.TransportError as exc:
        print(
            f"error: cannot reach the OMS API at {settings.resolved_api_url} ({exc}); is "
            "`oms dev` (or `oms api`) running? OMS_API_URL names another address",
            file=sys.stderr,
        )
        return 2
    try:
        print(json.dumps(response.json(), indent=2))
    except ValueError:
        print(response.text)
    return 0 if response.is_success else 1


def _cmd_order(args: argparse.Namespace, settings: Settings) -> int:
    action = args.action
    if action == "new":
        body: dict[str, Any] = {
            "client_order_id": args.client_order_id or f"cli-{uuid.uuid4().hex[:12]}",
            "fund": args.fund,
            "symbol": args.symbol,
            "side": args.side,
            "quantity": args.quantity,
            "order_type": "limit" if args.limit else "market",
            "time_in_force": args.tif,
            "notes": args.notes,
        }
        if args.limit:
            body["limit_price"] = args.limit
        return _call(settings, args.as_user, "POST", "/orders", body)
    if action == "list":
        return _call(settings, args.as_user, "GET", "/orders")
    if action == "show":
        return _call(settings, args.as_user, "GET", f"/orders/{args.order_id}")
    if action == "history":
        return _call(settings, args.as_user, "GET", f"/orders/{args.order_id}/history")
    if action == "wait":
        path = f"/orders/{args.order_id}?wait_for={args.wait_for}&timeout={args.timeout}"
        return _call(settings, args.as_user, "GET", path)
    text = getattr(args, "text", None) or ""  # release takes --venue, not a text
    bodies: dict[str, dict[str, Any]] = {
        "approve": {"comment": text},
        "reject": {"reason": text},
        "override": {"justification": text, "rules": getattr(args, "rules", None) or []},
        "release": {"venue": args.venue} if getattr(args, "venue", None) else {},
        "cancel": {"reason": text},
        "amend": {
            key: value
            for key, value in (
                ("quantity", getattr(args, "quantity", None)),
                ("limit_price", getattr(args, "limit", None)),
                ("reason", text),
            )
            if value
        },
    }
    return _call(
        settings, args.as_user, "POST", f"/orders/{args.order_id}/{action}", bodies[action]
    )


def _cmd_kill_switch(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "show":
        path = "/kill-switch" if args.fund is None else f"/kill-switch?fund={quote(args.fund)}"
        return _call(settings, args.as_user, "GET", path)
    body = {"engaged": args.action == "engage", "reason": args.reason}
    return _call(settings, args.as_user, "PUT", f"/kill-switch/{quote(args.fund)}", body)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oms", description="Order management system on Temporal.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "dev", help="run everything: Temporal dev server, workers, API, demo data"
    ).set_defaults(run=_cmd_dev)
    worker = sub.add_parser("worker", help="run workers")
    worker.add_argument(
        "--queue", choices=["orders", "back-office"], help="one queue (default: both)"
    )
    worker.set_defaults(run=_cmd_worker)
    sub.add_parser("api", help="run the HTTP API").set_defaults(run=_cmd_api)
    sub.add_parser(
        "simulators",
        help="run the simulated venue and back office alone (workers with OMS_RUN_SIMULATORS=false)",
    ).set_defaults(run=_cmd_simulators)
    sub.add_parser(
        "load-demo-data", help="create the schema and load demo reference data (idempotent)"
    ).set_defaults(run=_cmd_load_demo_data)
    audit_cmd = sub.add_parser("audit", help="the tamper-evident audit log")
    audit_actions = audit_cmd.add_subparsers(dest="audit_action", required=True)
    verify_cmd = audit_actions.add_parser(
        "verify", help="recompute every fund's chain; name the first row that does not match"
    )
    verify_cmd.add_argument("--fund", action="append", help="only this fund (repeatable)")
    verify_cmd.add_argument(
        "--archive", help="verify this `oms audit export` file instead, from its lines alone"
    )
    verify_cmd.set_defaults(run=_cmd_audit_verify)
    export_cmd = audit_actions.add_parser(
        "export",
        help="write the audit rows of a period as JSON Lines, with their chain hashes, to archive",
    )
    export_cmd.add_argument(
        "--from", dest="start", required=True, type=parse_instant, help="ISO 8601, with offset"
    )
    export_cmd.add_argument(
        "--to",
        dest="end",
        required=True,
        type=parse_instant,
        help="ISO 8601, with offset (excluded)",
    )
    export_cmd.add_argument("--fund", action="append", help="only this fund (repeatable)")
    export_cmd.add_argument("--out", help="write to this file (default: standard output)")
    export_cmd.set_defaults(run=_cmd_audit_export)
    token = sub.add_parser("token", help="print a bearer token for a user")
    token.add_argument("user")
    token.add_argument("--ttl", type=parse_duration, help="lifetime, e.g. 30m, 8h, 2d")
    token.set_defaults(run=_cmd_token)

    order = sub.add_parser("order", help="work with orders through the API")
    actions = order.add_subparsers(dest="action", required=True)
    new = actions.add_parser("new", help="create an order")
    new.add_argument("--fund", required=True)
    new.add_argument("--symbol", required=True)
    new.add_argument("--side", required=True, choices=["buy", "sell", "sell_short"])
    new.add_argument("--quantity", required=True)
    new.add_argument("--limit", help="limit price (omit for a market order)")
    new.add_argument("--tif", default="day", choices=["day", "gtc", "ioc", "fok"])
    new.add_argument("--client-order-id")
    new.add_argument("--notes", default="")
    actions.add_parser("list", help="list orders")
    wait = actions.add_parser(
        "wait", help="wait until an order reaches a status (or a later one), then show it"
    )
    wait.add_argument("order_id")
    wait.add_argument(
        "--for", dest="wait_for", required=True, help="status(es), comma-separated: settled"
    )
    wait.add_argument("--timeout", type=int, default=60, help="seconds, at most 60")
    for name in ("show", "history", "approve", "reject", "override", "release", "cancel", "amend"):
        one = actions.add_parser(name, help=f"{name} an order")
        one.add_argument("order_id")
        if name in ("approve", "reject", "override", "cancel"):
            one.add_argument("text", nargs="?", help="comment, reason or justification")
        if name == "amend":
            one.add_argument("--quantity", help="the new quantity")
            one.add_argument("--limit", help="the new limit price")
            # An option, not a trailing positional: argparse would take it before the options.
            one.add_argument("--reason", dest="text", help="why (kept on the order's history)")
        if name == "release":
            one.add_argument("--venue")
        if name == "override":
            one.add_argument(
                "--rule",
                dest="rules",
                action="append",
                help="a warned rule the override accepts (repeat: every warned rule)",
            )
    for action_parser in actions.choices.values():
        action_parser.add_argument("--as", dest="as_user", required=True, help="act as this user")
    order.set_defaults(run=_cmd_order)

    kill_switch = sub.add_parser(
        "kill-switch", help="engage, lift or show kill switches per fund or firm-wide (compliance)"
    )
    switch_actions = kill_switch.add_subparsers(dest="action", required=True)
    for name in ("engage", "lift"):
        one = switch_actions.add_parser(
            name, help=f"{name} the kill switch of a fund ('*': the firm)"
        )
        one.add_argument("fund", help="a fund, or '*' for the firm (quote it in a shell)")
        one.add_argument("--reason", required=True, help="why (recorded with who and when)")
    show = switch_actions.add_parser("show", help="list the engaged kill switches")
    show.add_argument("fund", nargs="?", help="only those covering this fund")
    for action_parser in switch_actions.choices.values():
        action_parser.add_argument("--as", dest="as_user", required=True, help="act as this user")
    kill_switch.set_defaults(run=_cmd_kill_switch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    if args.command == "dev" and "env" not in settings.model_fields_set:
        # `oms dev` is development unless OMS_ENV says otherwise; every other command production.
        settings = settings.model_copy(update={"env": "development"})
    try:
        code: int = args.run(args, settings)
    except UnsafeSettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
