"""Who may do what, in which fund: the real Casbin model and policy files.

Every row is asked of Casbin itself (set up only with the Authorizer's domain matching function)
and of the Authorizer's index, which must agree.
"""

from __future__ import annotations

import casbin
import pytest

from api.auth import Authorizer
from tests.policies.reference import POLICIES, reference_enforcer

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
    # Head of trading: a firm-wide role that holds desk_head in every fund.
    ("hana", "fund-alpha", "approvals", "desk_head", True),
    ("hana", "fund-beta", "approvals", "desk_head", True),
    ("hana", "fund-gamma", "approvals", "desk_head", True),
    ("hana", "fund-alpha", "approvals", "cio", False),
    ("hana", "fund-beta", "approvals", "cio", False),
    ("hana", "fund-alpha", "orders", "read", True),
    ("hana", "fund-beta", "positions", "read", True),
    ("hana", "fund-alpha", "orders", "create", False),
    ("hana", "fund-alpha", "orders", "release", False),
    ("hana", "fund-alpha", "orders", "override", False),
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
    return reference_enforcer(POLICIES)


@pytest.fixture(scope="module")
def authorizer() -> Authorizer:
    return Authorizer(POLICIES)


@pytest.mark.parametrize(
    ("user", "fund", "obj", "act", "allowed"),
    TABLE,
    ids=[f"{u or '<empty>'}-{f}-{o}-{a}-{'allow' if ok else 'deny'}" for u, f, o, a, ok in TABLE],
)
def test_policy_table(
    enforcer: casbin.Enforcer,
    authorizer: Authorizer,
    user: str,
    fund: str,
    obj: str,
    act: str,
    allowed: bool,
) -> None:
    assert enforcer.enforce(user, fund, obj, act) is allowed
    assert (authorizer.check(user, fund, obj, act) is not None) is allowed


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
        (
            ("hana", "fund-alpha", "approvals", "desk_head"),
            ["desk_head", "*", "approvals", "desk_head"],
        ),
        (("cora", "fund-gamma", "orders", "override"), ["compliance", "*", "orders", "override"]),
        (
            ("sim-venue", "fund-beta", "executions", "create"),
            ["venue", "*", "executions", "create"],
        ),
    ],
)
def test_enforce_ex_explains_an_allowed_request(
    enforcer: casbin.Enforcer,
    authorizer: Authorizer,
    request_: tuple[str, str, str, str],
    rule: list[str],
) -> None:
    allowed, explain = enforcer.enforce_ex(*request_)
    assert allowed is True
    assert explain == rule
    grant = authorizer.check(*request_)
    assert grant is not None
    assert grant.policy == rule


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


def test_every_permission_is_held_by_some_user(
    enforcer: casbin.Enforcer, authorizer: Authorizer
) -> None:
    users = {rule[0] for rule in enforcer.get_grouping_policy()} - all_roles(enforcer)
    held = {
        role
        for user in users
        for fund in [*FUNDS, "fund-gamma"]
        for role in authorizer.roles(user, fund)
    }
    assert {rule[0] for rule in enforcer.get_policy()} <= held


def test_every_granted_role_grants_something(
    enforcer: casbin.Enforcer, authorizer: Authorizer
) -> None:
    # A role with no permission of its own (head_of_trading) must inherit one that has some.
    policy_roles = {rule[0] for rule in enforcer.get_policy()}
    for role in {rule[1] for rule in enforcer.get_grouping_policy()}:
        assert {role, *authorizer.roles(role, "fund-gamma")} & policy_roles, role


def all_roles(enforcer: casbin.Enforcer) -> set[str]:
    return {rule[0] for rule in enforcer.get_policy()} | {
        rule[1] for rule in enforcer.get_grouping_policy()
    }


@pytest.mark.parametrize(
    ("role", "obj", "act"),
    [
        ("pm", "orders", "create"),
        ("compliance", "orders", "override"),
        ("venue", "executions", "create"),
        ("head_of_trading", "approvals", "desk_head"),
    ],
)
def test_a_role_name_as_subject_passes_the_raw_enforcer(
    enforcer: casbin.Enforcer, authorizer: Authorizer, role: str, obj: str, act: str
) -> None:
    # Casbin's role manager links a name to itself, so a subject spelled like a role holds that
    # role's permissions in every fund; the index answers as Casbin does. The API refuses
    # subjects that are not users (Authorizer.is_known_user, next test).
    assert enforcer.enforce(role, "fund-gamma", obj, act) is True
    assert authorizer.check(role, "fund-gamma", obj, act) is not None


def test_no_role_is_a_known_user(enforcer: casbin.Enforcer, authorizer: Authorizer) -> None:
    # head_of_trading stands first in a `g` line, as users do: it is a role all the same.
    for role in all_roles(enforcer):
        assert authorizer.is_known_user(role) is False, role
    for user in ["alice", "bob", "tom", "dana", "carl", "cora", "mike", "betty", "hana"]:
        assert authorizer.is_known_user(user) is True, user
    assert authorizer.is_known_user("mallory") is False
