"""Who may do what, in which fund: the real Casbin model and policy files."""

from __future__ import annotations

from pathlib import Path

import casbin
import pytest

POLICIES = Path(__file__).resolve().parents[2] / "policies"

FUNDS = ["fund-alpha", "fund-beta"]

# (user, fund, object, action) -> allowed
TABLE: list[tuple[str, str, str, str, bool]] = [
    # Portfolio managers: their own fund only.
    ("alice", "fund-alpha", "orders", "create", True),
    ("alice", "fund-alpha", "orders", "read", True),
    ("alice", "fund-alpha", "orders", "cancel", True),
    ("alice", "fund-alpha", "orders", "amend", True),
    ("alice", "fund-alpha", "positions", "read", True),
    ("alice", "fund-alpha", "compliance", "check", True),
    ("alice", "fund-beta", "orders", "create", False),
    ("alice", "fund-beta", "orders", "read", False),
    ("alice", "fund-beta", "orders", "cancel", False),
    ("alice", "fund-beta", "positions", "read", False),
    ("alice", "fund-gamma", "orders", "create", False),
    ("alice", "*", "orders", "create", False),
    ("bob", "fund-beta", "orders", "create", True),
    ("bob", "fund-beta", "orders", "read", True),
    ("bob", "fund-alpha", "orders", "create", False),
    ("bob", "fund-alpha", "orders", "read", False),
    # A PM neither releases, approves, overrides nor posts executions.
    ("alice", "fund-alpha", "orders", "release", False),
    ("alice", "fund-alpha", "approvals", "desk_head", False),
    ("alice", "fund-alpha", "approvals", "cio", False),
    ("alice", "fund-alpha", "orders", "override", False),
    ("alice", "fund-alpha", "kill_switch", "write", False),
    ("alice", "fund-alpha", "executions", "create", False),
    ("alice", "fund-alpha", "settlements", "confirm", False),
    # Trader: releases and cancels in both funds, creates nothing.
    ("tom", "fund-alpha", "orders", "release", True),
    ("tom", "fund-beta", "orders", "release", True),
    ("tom", "fund-alpha", "orders", "cancel", True),
    ("tom", "fund-beta", "orders", "read", True),
    ("tom", "fund-alpha", "orders", "create", False),
    ("tom", "fund-beta", "orders", "create", False),
    ("tom", "fund-alpha", "orders", "amend", False),
    ("tom", "fund-gamma", "orders", "release", False),
    ("tom", "fund-alpha", "approvals", "desk_head", False),
    # Desk head: approves at the desk_head level in both funds, not at cio.
    ("dana", "fund-alpha", "approvals", "desk_head", True),
    ("dana", "fund-beta", "approvals", "desk_head", True),
    ("dana", "fund-alpha", "approvals", "cio", False),
    ("dana", "fund-beta", "approvals", "cio", False),
    ("dana", "fund-gamma", "approvals", "desk_head", False),
    ("dana", "fund-alpha", "orders", "create", False),
    ("dana", "fund-alpha", "orders", "release", False),
    # CIO: approves at the cio level, not at desk_head.
    ("carl", "fund-alpha", "approvals", "cio", True),
    ("carl", "fund-beta", "approvals", "cio", True),
    ("carl", "fund-alpha", "approvals", "desk_head", False),
    ("carl", "fund-gamma", "approvals", "cio", False),
    ("carl", "fund-alpha", "orders", "override", False),
    # Compliance: firm-wide, in every fund, even one the policy never names.
    ("cora", "fund-alpha", "orders", "override", True),
    ("cora", "fund-beta", "orders", "override", True),
    ("cora", "fund-gamma", "orders", "override", True),
    ("cora", "fund-alpha", "orders", "read", True),
    ("cora", "fund-gamma", "orders", "read", True),
    ("cora", "fund-gamma", "orders", "history", True),
    # Every role that reads a fund's orders may read their history (API.md).
    ("alice", "fund-alpha", "orders", "history", True),
    ("alice", "fund-beta", "orders", "history", False),
    ("tom", "fund-beta", "orders", "history", True),
    ("dana", "fund-alpha", "orders", "history", True),
    ("mike", "fund-alpha", "orders", "history", True),
    ("betty", "fund-beta", "orders", "history", True),
    ("sim-venue", "fund-alpha", "orders", "history", False),
    ("cora", "fund-gamma", "kill_switch", "write", True),
    ("cora", "*", "kill_switch", "write", True),
    ("cora", "fund-alpha", "orders", "create", False),
    ("cora", "fund-alpha", "approvals", "cio", False),
    ("cora", "fund-alpha", "orders", "release", False),
    # Middle office.
    ("mike", "fund-alpha", "positions", "read", True),
    ("mike", "fund-gamma", "positions", "read", True),
    ("mike", "fund-beta", "allocations", "read", True),
    ("mike", "fund-alpha", "orders", "create", False),
    ("mike", "fund-alpha", "settlements", "confirm", False),
    # Back office.
    ("betty", "fund-alpha", "settlements", "confirm", True),
    ("betty", "fund-beta", "settlements", "confirm", True),
    ("betty", "fund-alpha", "settlements", "read", True),
    ("betty", "fund-alpha", "positions", "read", False),
    ("betty", "fund-alpha", "orders", "create", False),
    # The venue service identity.
    ("sim-venue", "fund-alpha", "executions", "create", True),
    ("sim-venue", "fund-beta", "executions", "create", True),
    ("sim-venue", "fund-alpha", "orders", "read", False),
    ("sim-venue", "fund-alpha", "orders", "create", False),
    # Nobody else gets anything.
    ("mallory", "fund-alpha", "orders", "read", False),
    ("mallory", "fund-alpha", "orders", "create", False),
    ("mallory", "*", "orders", "read", False),
    ("", "fund-alpha", "orders", "read", False),
    # Objects and actions match exactly.
    ("alice", "fund-alpha", "orders", "*", False),
    ("alice", "fund-alpha", "*", "create", False),
    ("alice", "fund-alpha", "Orders", "create", False),
]


@pytest.fixture(scope="module")
def enforcer() -> casbin.Enforcer:
    return casbin.Enforcer(str(POLICIES / "model.conf"), str(POLICIES / "policy.csv"))


@pytest.mark.parametrize(
    ("user", "fund", "obj", "act", "allowed"),
    TABLE,
    ids=[f"{u or '<empty>'}-{f}-{o}-{a}-{'allow' if ok else 'deny'}" for u, f, o, a, ok in TABLE],
)
def test_policy_table(
    enforcer: casbin.Enforcer, user: str, fund: str, obj: str, act: str, allowed: bool
) -> None:
    assert enforcer.enforce(user, fund, obj, act) is allowed


def test_table_has_no_contradictions() -> None:
    verdicts: dict[tuple[str, str, str, str], bool] = {}
    for user, fund, obj, act, allowed in TABLE:
        key = (user, fund, obj, act)
        assert verdicts.setdefault(key, allowed) is allowed, key


@pytest.mark.parametrize(
    ("request_", "rule"),
    [
        (("alice", "fund-alpha", "orders", "create"), ["pm", "*", "orders", "create"]),
        (
            ("dana", "fund-beta", "approvals", "desk_head"),
            ["desk_head", "*", "approvals", "desk_head"],
        ),
        (("carl", "fund-alpha", "approvals", "cio"), ["cio", "*", "approvals", "cio"]),
        (("cora", "fund-gamma", "orders", "override"), ["compliance", "*", "orders", "override"]),
        (
            ("sim-venue", "fund-beta", "executions", "create"),
            ["venue", "*", "executions", "create"],
        ),
    ],
)
def test_enforce_ex_explains_an_allowed_request(
    enforcer: casbin.Enforcer, request_: tuple[str, str, str, str], rule: list[str]
) -> None:
    allowed, explain = enforcer.enforce_ex(*request_)
    assert allowed is True
    assert explain == rule


def test_enforce_ex_explains_nothing_for_a_denied_request(enforcer: casbin.Enforcer) -> None:
    allowed, explain = enforcer.enforce_ex("alice", "fund-beta", "orders", "create")
    assert allowed is False
    assert explain == []


def test_roles_per_fund(enforcer: casbin.Enforcer) -> None:
    assert enforcer.get_roles_for_user_in_domain("alice", "fund-alpha") == ["pm"]
    assert enforcer.get_roles_for_user_in_domain("alice", "fund-beta") == []
    assert enforcer.get_roles_for_user_in_domain("cora", "*") == ["compliance"]
    for fund in FUNDS:
        assert enforcer.get_roles_for_user_in_domain("tom", fund) == ["trader"]


def test_every_permission_is_granted_to_some_user(enforcer: casbin.Enforcer) -> None:
    granted_roles = {rule[1] for rule in enforcer.get_grouping_policy()}
    policy_roles = {rule[0] for rule in enforcer.get_policy()}
    assert policy_roles == granted_roles


@pytest.mark.parametrize(
    ("role", "obj", "act"),
    [
        ("pm", "orders", "create"),
        ("compliance", "orders", "override"),
        ("venue", "executions", "create"),
    ],
)
def test_a_role_name_as_subject_passes_the_raw_enforcer(
    enforcer: casbin.Enforcer, role: str, obj: str, act: str
) -> None:
    # Casbin's role manager links a name to itself, so a subject spelled like a role holds that
    # role's permissions in every fund. The API refuses subjects the policy grants nothing
    # (Authorizer.is_known_user), and the next test keeps role names out of the user names.
    assert enforcer.enforce(role, "fund-gamma", obj, act) is True


def test_no_user_is_named_like_a_role(enforcer: casbin.Enforcer) -> None:
    users = {rule[0] for rule in enforcer.get_grouping_policy()}
    roles = {rule[0] for rule in enforcer.get_policy()} | {
        rule[1] for rule in enforcer.get_grouping_policy()
    }
    assert users.isdisjoint(roles)
