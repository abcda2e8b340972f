"""How long an authority check takes on a large policy: the Authorizer's index against Casbin.

Generates a policy of --lines lines (default 10,000) shaped like a large firm's: a few dozen
roles with firm-wide permissions and a role hierarchy (firm-wide and per fund), fund-specific
entitlements, and a couple of thousand users each granted a role or three in a few of 150 funds,
some firm-wide. It writes that and policies/model.conf into a temporary directory, then prints:

1.  load: building an `Authorizer` (Casbin parses, the index is built), --loads times.
2.  check: `Authorizer.check` over --requests random requests (about half allowed: users
    asking in their own funds for what their roles allow, and anyone asking for anything).
3.  casbin: `casbin.Enforcer.enforce_ex` (set up as the Authorizer's) on the first --sample of
    the same requests, for comparison: it evaluates the matcher against every policy line.

Percentiles are nearest-rank: loads in milliseconds, checks in microseconds. One pass over every request runs first, uncounted
(20 requests for Casbin). The garbage collector stays on, as it is in the API.

Run: `python -m bench.authority [--lines N] [--requests N] [--sample N] [--seed N]`.
"""

from __future__ import annotations

import argparse
import gc
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import casbin

from api.auth import Authorizer, build_enforcer
from bench.measure import percentile

POLICIES = Path(__file__).resolve().parents[1] / "policies"

Request = tuple[str, str, str, str]

# What a large firm's roles may do, firm-wide: role -> (object, action) pairs.
ROLE_PERMISSIONS: dict[str, list[tuple[str, str]]] = {
    "pm": [
        ("orders", "create"),
        ("orders", "read"),
        ("orders", "cancel"),
        ("orders", "amend"),
        ("orders", "history"),
        ("positions", "read"),
        ("compliance", "check"),
    ],
    "senior_pm": [("limits", "read"), ("reports", "read")],
    "trader": [
        ("orders", "read"),
        ("orders", "release"),
        ("orders", "cancel"),
        ("orders", "history"),
    ],
    "senior_trader": [("orders", "amend"), ("limits", "read")],
    "desk_head": [
        ("orders", "read"),
        ("orders", "history"),
        ("approvals", "desk_head"),
        ("positions", "read"),
    ],
    "head_of_trading": [("limits", "write"), ("reports", "export")],
    "cio": [
        ("orders", "read"),
        ("orders", "history"),
        ("approvals", "cio"),
        ("positions", "read"),
    ],
    "risk": [("approvals", "risk"), ("limits", "read"), ("limits", "write"), ("positions", "read")],
    "compliance": [
        ("orders", "read"),
        ("orders", "history"),
        ("orders", "override"),
        ("kill_switch", "write"),
        ("positions", "read"),
    ],
    "middle_office": [
        ("orders", "read"),
        ("orders", "history"),
        ("positions", "read"),
        ("allocations", "read"),
        ("allocations", "write"),
    ],
    "back_office": [
        ("orders", "read"),
        ("orders", "history"),
        ("settlements", "read"),
        ("settlements", "confirm"),
    ],
    "treasury": [("cash", "read"), ("cash", "move"), ("settlements", "read")],
    "analyst": [("positions", "read"), ("reports", "read"), ("models", "read")],
    "quant": [("models", "read"), ("models", "deploy"), ("reports", "read")],
    "auditor": [("orders", "read"), ("orders", "history"), ("reports", "read")],
    "ops": [("orders", "read"), ("settlements", "read"), ("allocations", "read")],
    "venue": [("executions", "create")],
    "data_steward": [("reports", "export"), ("models", "read")],
    "regional_head_emea": [("reports", "read")],
    "regional_head_apac": [("reports", "read")],
    "regional_head_amer": [("reports", "read")],
}
ROLES = sorted(ROLE_PERMISSIONS)
PERMISSIONS = sorted({perm for perms in ROLE_PERMISSIONS.values() for perm in perms})

# Firm-wide inheritance (role, inherited role).
HIERARCHY = [
    ("head_of_trading", "desk_head"),
    ("regional_head_emea", "head_of_trading"),
    ("regional_head_apac", "head_of_trading"),
    ("regional_head_amer", "head_of_trading"),
    ("senior_pm", "pm"),
    ("senior_trader", "trader"),
    ("cio", "analyst"),
]
# Roles held per fund, and the few held firm-wide.
FUND_ROLES = ["pm", "senior_pm", "trader", "senior_trader", "desk_head", "cio", "risk", "analyst"]
FIRM_ROLES = ["compliance", "middle_office", "back_office", "treasury", "auditor", "ops", "quant"]
FIRM_ROLES += ["data_steward", "head_of_trading", "regional_head_emea", "regional_head_apac"]
FIRM_ROLES += ["regional_head_amer", "risk"]


@dataclass(frozen=True)
class GeneratedPolicy:
    """A generated policy.csv and the names it uses."""

    text: str
    users: list[str]
    funds: list[str]
    user_funds: dict[str, list[str]]
    """User -> the funds they are granted a role in ("*" for a firm-wide grant)."""
    user_permissions: dict[str, list[tuple[str, str]]]
    """User -> what their roles allow somewhere, to ask for it (in or out of their funds)."""


def generate_policy(lines: int = 10_000, seed: int = 0, funds: int = 150) -> GeneratedPolicy:
    """Return a policy of about `lines` rule lines, shaped like a large firm's."""
    rng = random.Random(seed)
    fund_names = [f"fund-{i:03d}" for i in range(1, funds + 1)]
    out = ["# Permissions: role, fund ('*' = every fund), object, action."]
    for role in ROLES:
        out += [f"p, {role}, *, {obj}, {act}" for obj, act in ROLE_PERMISSIONS[role]]
    # Fund-specific entitlements: a role may do more in some funds than firm-wide.
    for _ in range(lines // 8):
        obj, act = rng.choice(PERMISSIONS)
        out.append(f"p, {rng.choice(FUND_ROLES)}, {rng.choice(fund_names)}, {obj}, {act}")
    out.append("# Role hierarchy: role, inherited role, fund ('*' = every fund).")
    out += [f"g, {role}, {inherited}, *" for role, inherited in HIERARCHY]
    # Some funds let a role act as another there (a risk officer is desk head of a small fund).
    for fund in rng.sample(fund_names, funds // 5):
        out.append(f"g, {rng.choice(FUND_ROLES)}, {rng.choice(FUND_ROLES)}, {fund}")
    out.append("# Grants: user, role, fund ('*' = firm-wide).")
    user_funds: dict[str, list[str]] = {}
    user_permissions: dict[str, list[tuple[str, str]]] = {}
    inherits = dict(HIERARCHY)
    rule_lines = sum(1 for line in out if not line.startswith("#"))
    while rule_lines < lines:
        user = f"user-{len(user_funds) + 1:05d}"
        if rng.random() < 0.06:
            held = [(rng.choice(FIRM_ROLES), "*")]
        else:
            roles = rng.sample(FUND_ROLES, rng.choice([1, 1, 1, 2, 2, 3]))
            own = rng.sample(fund_names, rng.choice([1, 1, 2, 3, 4, 6]))
            held = [(role, fund) for role in roles for fund in own]
        held = held[: lines - rule_lines]
        out += [f"g, {user}, {role}, {fund}" for role, fund in held]
        rule_lines += len(held)
        user_funds[user] = sorted({fund for _, fund in held})
        perms: set[tuple[str, str]] = set()
        for role, _ in held:
            while role:
                perms.update(ROLE_PERMISSIONS[role])
                role = inherits.get(role, "")
        user_permissions[user] = sorted(perms)
    return GeneratedPolicy(
        text="\n".join(out) + "\n",
        users=list(user_funds),
        funds=fund_names,
        user_funds=user_funds,
        user_permissions=user_permissions,
    )


def random_requests(policy: GeneratedPolicy, count: int, seed: int = 1) -> list[Request]:
    """Return `count` random requests, about half of them allowed.

    Half are users asking in their own funds for what their roles allow (mostly allowed), half
    any user asking for anything in any fund (mostly denied), a few of those by unknown users or
    in unknown funds.
    """
    rng = random.Random(seed)
    requests: list[Request] = []
    for _ in range(count):
        user = rng.choice(policy.users)
        if rng.random() < 0.5:
            own = policy.user_funds[user]
            fund = rng.choice(own)
            fund = rng.choice(policy.funds) if fund == "*" else fund
            obj, act = rng.choice(policy.user_permissions[user])
        else:
            fund = rng.choice(policy.funds)
            obj, act = rng.choice(PERMISSIONS)
            roll = rng.random()
            if roll < 0.05:
                user = f"stranger-{rng.randrange(1000)}"
            elif roll < 0.10:
                fund = f"fund-new-{rng.randrange(100)}"
            elif roll < 0.12:
                fund = "*"
        requests.append((user, fund, obj, act))
    return requests


def timed(call: Callable[[], object], repeat: int) -> list[float]:
    """Return the seconds each of `repeat` calls of `call` took."""
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def time_each(
    check: Callable[[str, str, str, str], object], requests: Sequence[Request], warmup: int
) -> list[float]:
    """Return the seconds `check` took on each request, after `warmup` uncounted ones."""
    for request in requests[:warmup]:
        check(*request)
    seconds = []
    clock = time.perf_counter
    for request in requests:
        started = clock()
        check(*request)
        seconds.append(clock() - started)
    return seconds


def row(label: str, seconds: Sequence[float], unit: float = 1e6) -> str:
    """Format p50, p95, p99 and max of `seconds`, times `unit` (1e6: in microseconds)."""
    scaled = [s * unit for s in seconds]
    cells = [percentile(scaled, p) for p in (50, 95, 99)] + [max(scaled)]
    return f"  {label:<22}" + "".join(f"{c:>11.1f}" for c in cells) + f"{len(scaled):>9}"


def header(label: str) -> str:
    """Return the column titles for `row`."""
    return (
        f"  {label:<22}" + "".join(f"{h:>11}" for h in ("p50", "p95", "p99", "max")) + f"{'n':>9}"
    )


def main() -> None:
    """Generate the policy, measure load and check, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=500)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    policy = generate_policy(args.lines, args.seed)
    # The directory outlives the measurements: the Authorizer looks at its files every second.
    with tempfile.TemporaryDirectory() as tmp:
        policies_dir = Path(tmp)
        shutil.copyfile(POLICIES / "model.conf", policies_dir / "model.conf")
        (policies_dir / "policy.csv").write_text(policy.text)
        authorizer = Authorizer(policies_dir)
        loads = timed(lambda: Authorizer(policies_dir), args.loads)
        enforcer = build_enforcer((policies_dir / "model.conf").read_text(), policy.text)
        measure(args, policy, authorizer, enforcer, loads)


def measure(
    args: argparse.Namespace,
    policy: GeneratedPolicy,
    authorizer: Authorizer,
    enforcer: casbin.Enforcer,
    loads: list[float],
) -> None:
    """Time the checks and print every figure."""
    requests = random_requests(policy, args.requests, args.seed + 1)

    lines = sum(1 for line in policy.text.splitlines() if line and not line.startswith("#"))
    allowed = sum(authorizer.check(*request) is not None for request in requests)
    print(
        f"policy: {lines} lines, {len(policy.users)} users, {len(policy.funds)} funds, "
        f"{len(ROLES)} roles; {len(requests)} requests, {allowed / len(requests):.0%} allowed",
        flush=True,
    )
    # The collector stays on, as in the API: its pauses land in some checks' figures.
    gc.collect()
    checks = time_each(authorizer.check, requests, warmup=len(requests))
    casbin_checks = time_each(enforcer.enforce_ex, requests[: args.sample], warmup=20)
    print(header("load (ms)"))
    print(row("Authorizer()", loads, unit=1e3))
    print(header("check (us)"))
    print(row("Authorizer.check", checks))
    print(row("casbin enforce_ex", casbin_checks))
    ratio = percentile(casbin_checks, 50) / percentile(checks, 50)
    print(f"  casbin p50 / check p50: {ratio:,.0f}x", flush=True)


if __name__ == "__main__":
    main()
