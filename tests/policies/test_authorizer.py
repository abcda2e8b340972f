"""The Authorizer's index answers as Casbin's enforce_ex does, with the evidence for the audit.

Casbin (`reference_enforcer`: the files read by Casbin itself) is the reference: every request
of the demo policy, random small policies (hypothesis), role chains deeper than Casbin follows,
and random requests against a generated ten-thousand-line policy.
"""

from __future__ import annotations

import hashlib
import itertools
import tempfile
from pathlib import Path

import casbin
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.auth import Authorizer, Grant, PolicyError
from bench.authority import generate_policy, random_requests
from tests.policies.reference import POLICIES, reference_enforcer, write_policies

Request = tuple[str, str, str, str]


def assert_agrees(authorizer: Authorizer, enforcer: casbin.Enforcer, request: Request) -> None:
    allowed, rule = enforcer.enforce_ex(*request)
    grant = authorizer.check(*request)
    assert (grant is not None) is allowed, request
    if grant is not None:
        # The same rule: Casbin names the first line of the policy that matches.
        assert grant.policy == rule, request


def subjects_funds_permissions(
    enforcer: casbin.Enforcer,
) -> tuple[set[str], set[str], set[tuple[str, str]]]:
    """Every name, fund and permission the policy mentions, and some it does not."""
    grants, policies = enforcer.get_grouping_policy(), enforcer.get_policy()
    subjects = {g[0] for g in grants} | {g[1] for g in grants} | {p[0] for p in policies}
    funds = {g[2] for g in grants} | {p[1] for p in policies} | {"*", "fund-never-named"}
    permissions = {(p[2], p[3]) for p in policies} | {("orders", "*"), ("Orders", "create")}
    return subjects | {"mallory", ""}, funds, permissions


def users_of(enforcer: casbin.Enforcer) -> set[str]:
    """Names granted a role that are not themselves roles."""
    grants, policies = enforcer.get_grouping_policy(), enforcer.get_policy()
    return {g[0] for g in grants} - {g[1] for g in grants} - {p[0] for p in policies}


# --- the demo policy ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def enforcer() -> casbin.Enforcer:
    return reference_enforcer(POLICIES)


@pytest.fixture(scope="module")
def authorizer() -> Authorizer:
    return Authorizer(POLICIES)


def test_the_index_agrees_with_casbin_on_every_demo_request(
    authorizer: Authorizer, enforcer: casbin.Enforcer
) -> None:
    subjects, funds, permissions = subjects_funds_permissions(enforcer)
    for subject, fund, (obj, act) in itertools.product(subjects, funds, permissions):
        assert_agrees(authorizer, enforcer, (subject, fund, obj, act))


def test_roles_agree_with_casbins_implicit_roles(
    authorizer: Authorizer, enforcer: casbin.Enforcer
) -> None:
    subjects, funds, _ = subjects_funds_permissions(enforcer)
    for subject, fund in itertools.product(subjects, funds):
        implicit = set(enforcer.get_implicit_roles_for_user(subject, fund)) - {subject}
        assert authorizer.roles(subject, fund) == sorted(implicit), (subject, fund)


@pytest.mark.parametrize(
    ("user", "fund", "roles"),
    [
        ("hana", "fund-alpha", ["desk_head", "head_of_trading"]),
        ("hana", "fund-beta", ["desk_head", "head_of_trading"]),
        ("hana", "fund-gamma", ["desk_head", "head_of_trading"]),
        ("dana", "fund-alpha", ["desk_head"]),
        ("dana", "fund-gamma", []),
        ("tom", "fund-beta", ["trader"]),
        ("cora", "fund-alpha", ["compliance"]),
        ("cora", "*", ["compliance"]),
        ("alice", "fund-beta", []),
        ("mallory", "fund-alpha", []),
    ],
)
def test_roles_in_a_fund(authorizer: Authorizer, user: str, fund: str, roles: list[str]) -> None:
    assert authorizer.roles(user, fund) == roles


def test_a_grant_carries_the_rule_the_policy_version_and_the_roles(
    authorizer: Authorizer,
) -> None:
    version = hashlib.sha256(
        (POLICIES / "model.conf").read_bytes() + (POLICIES / "policy.csv").read_bytes()
    ).hexdigest()
    assert authorizer.policy_version == version
    assert authorizer.check("hana", "fund-beta", "approvals", "desk_head") == Grant(
        policy=["desk_head", "*", "approvals", "desk_head"],
        policy_version=version,
        roles=("desk_head", "head_of_trading"),
    )
    assert authorizer.check("alice", "fund-alpha", "orders", "create") == Grant(
        policy=["pm", "*", "orders", "create"], policy_version=version, roles=("pm",)
    )


def test_a_grant_is_the_callers_own_copy(authorizer: Authorizer) -> None:
    grant = authorizer.check("alice", "fund-alpha", "orders", "create")
    assert grant is not None
    grant.policy.append("tampered")
    again = authorizer.check("alice", "fund-alpha", "orders", "create")
    assert again is not None
    assert again.policy == ["pm", "*", "orders", "create"]


def test_grant_keeps_its_first_field() -> None:
    # Callers that build or read a Grant by its rule alone keep working.
    assert Grant(policy=["pm", "*", "orders", "create"]).policy == ["pm", "*", "orders", "create"]
    assert Grant(["cio", "*", "approvals", "cio"]).roles == ()


@pytest.mark.parametrize(
    ("fund", "obj", "act", "users"),
    [
        ("fund-alpha", "approvals", "desk_head", ["dana", "hana"]),
        ("fund-beta", "approvals", "desk_head", ["dana", "hana"]),
        ("fund-gamma", "approvals", "desk_head", ["hana"]),
        ("fund-alpha", "approvals", "cio", ["carl"]),
        ("fund-gamma", "approvals", "cio", []),
        ("fund-alpha", "orders", "create", ["alice"]),
        ("fund-gamma", "orders", "override", ["cora"]),
        ("fund-alpha", "orders", "release", ["tom"]),
        ("fund-alpha", "orders", "nothing", []),
    ],
)
def test_users_with(
    authorizer: Authorizer, fund: str, obj: str, act: str, users: list[str]
) -> None:
    assert authorizer.users_with(fund, obj, act) == users


def test_users_with_agrees_with_casbin(authorizer: Authorizer, enforcer: casbin.Enforcer) -> None:
    _, funds, permissions = subjects_funds_permissions(enforcer)
    users = users_of(enforcer)
    for fund, (obj, act) in itertools.product(funds, permissions):
        expected = sorted(user for user in users if enforcer.enforce(user, fund, obj, act))
        assert authorizer.users_with(fund, obj, act) == expected, (fund, obj, act)


def test_funds_allowed(authorizer: Authorizer) -> None:
    funds = ["fund-alpha", "fund-beta", "fund-gamma"]
    assert authorizer.funds_allowed("dana", funds, "approvals", "desk_head") == funds[:2]
    assert authorizer.funds_allowed("hana", funds, "approvals", "desk_head") == funds
    assert authorizer.funds_allowed("alice", funds, "orders", "read") == ["fund-alpha"]


# --- role chains across funds ------------------------------------------------------------------


def demo_policy_plus(*lines: str) -> str:
    return (POLICIES / "policy.csv").read_text() + "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("extra", "request_", "allowed"),
    [
        # A fund's grant of a role whose inheritance is firm-wide: desk head in that fund only.
        (
            ["g, hank, head_of_trading, fund-alpha"],
            ("hank", "fund-alpha", "approvals", "desk_head"),
            True,
        ),
        (
            ["g, hank, head_of_trading, fund-alpha"],
            ("hank", "fund-beta", "approvals", "desk_head"),
            False,
        ),
        # A firm-wide grant of a role that inherits another in one fund only.
        (["g, head_of_trading, cio, fund-beta"], ("hana", "fund-beta", "approvals", "cio"), True),
        (["g, head_of_trading, cio, fund-beta"], ("hana", "fund-alpha", "approvals", "cio"), False),
        # A permission that holds in one fund only.
        (
            ["p, desk_head, fund-beta, limits, write"],
            ("hana", "fund-beta", "limits", "write"),
            True,
        ),
        (["p, desk_head, fund-beta, limits, write"], ("hana", "*", "limits", "write"), False),
        (
            ["p, desk_head, fund-beta, limits, write"],
            ("dana", "fund-alpha", "limits", "write"),
            False,
        ),
    ],
)
def test_inheritance_mixes_fund_and_firm_wide_grants(
    tmp_path: Path, extra: list[str], request_: Request, allowed: bool
) -> None:
    write_policies(tmp_path, demo_policy_plus(*extra))
    authorizer, enforcer = Authorizer(tmp_path), reference_enforcer(tmp_path)
    assert (authorizer.check(*request_) is not None) is allowed
    assert_agrees(authorizer, enforcer, request_)


@pytest.mark.parametrize(
    ("first", "last", "rule"),
    [
        # Casbin names the first line that matches, whichever role or fund it is for.
        ("p, head_of_trading, *, approvals, desk_head", "", ["head_of_trading", "*"]),
        ("", "p, head_of_trading, *, approvals, desk_head", ["desk_head", "*"]),
        ("", "p, desk_head, fund-alpha, approvals, desk_head", ["desk_head", "*"]),
        ("p, desk_head, fund-alpha, approvals, desk_head", "", ["desk_head", "fund-alpha"]),
    ],
)
def test_the_first_matching_line_is_the_evidence(
    tmp_path: Path, first: str, last: str, rule: list[str]
) -> None:
    text = f"{first}\n{(POLICIES / 'policy.csv').read_text()}\n{last}\n"
    write_policies(tmp_path, text)
    request = ("hana", "fund-alpha", "approvals", "desk_head")
    grant = Authorizer(tmp_path).check(*request)
    assert grant is not None
    assert grant.policy == [*rule, "approvals", "desk_head"]
    assert_agrees(Authorizer(tmp_path), reference_enforcer(tmp_path), request)


def test_a_chain_deeper_than_casbin_follows_stops_where_casbin_stops(tmp_path: Path) -> None:
    # Casbin's role manager follows at most 10 levels (the user being the first).
    chain = [f"level-{i:02d}" for i in range(14)]
    lines = [f"p, {role}, *, reports, {role}" for role in chain]
    lines += [f"g, {a}, {b}, *" for a, b in itertools.pairwise(chain)]
    lines += ["g, deep, level-00, fund-alpha"]
    write_policies(tmp_path, "\n".join(lines) + "\n")
    authorizer, enforcer = Authorizer(tmp_path), reference_enforcer(tmp_path)
    verdicts = [authorizer.check("deep", "fund-alpha", "reports", role) for role in chain]
    assert [grant is not None for grant in verdicts] == [True] * 9 + [False] * 5
    for role in chain:
        for subject in ["deep", "level-00", "level-03"]:
            assert_agrees(authorizer, enforcer, (subject, "fund-alpha", "reports", role))


# --- random small policies ---------------------------------------------------------------------

USERS = ["u0", "u1", "u2"]
ROLES = ["r0", "r1", "r2", "r3"]
FUNDS = ["f0", "f1", "*"]
PERMISSIONS = [("o0", "a0"), ("o0", "a1"), ("o1", "a0")]

policy_lines = st.lists(
    st.one_of(
        st.builds(
            lambda sub, fund, perm: f"p, {sub}, {fund}, {perm[0]}, {perm[1]}",
            st.sampled_from(ROLES + USERS[:1]),
            st.sampled_from(FUNDS),
            st.sampled_from(PERMISSIONS),
        ),
        st.builds(
            lambda sub, role, fund: f"g, {sub}, {role}, {fund}",
            st.sampled_from(USERS + ROLES),
            st.sampled_from(ROLES),
            st.sampled_from(FUNDS),
        ),
    ),
    max_size=16,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_lines)
def test_the_index_agrees_with_casbin_on_random_policies(lines: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        policies_dir = Path(tmp)
        write_policies(policies_dir, "\n".join(lines) + "\n")
        authorizer, enforcer = Authorizer(policies_dir), reference_enforcer(policies_dir)
    subjects = [*USERS, *ROLES, "nobody"]
    funds = ["f0", "f1", "f2", "*"]
    for subject, fund, (obj, act) in itertools.product(
        subjects, funds, [*PERMISSIONS, ("o1", "a1")]
    ):
        assert_agrees(authorizer, enforcer, (subject, fund, obj, act))
    users = users_of(enforcer)
    for fund, (obj, act) in itertools.product(funds, PERMISSIONS):
        expected = sorted(user for user in users if enforcer.enforce(user, fund, obj, act))
        assert authorizer.users_with(fund, obj, act) == expected
    for subject, fund in itertools.product(subjects, funds):
        implicit = set(enforcer.get_implicit_roles_for_user(subject, fund)) - {subject}
        assert authorizer.roles(subject, fund) == sorted(implicit)


# --- a large policy ----------------------------------------------------------------------------


def test_the_index_agrees_with_casbin_on_a_ten_thousand_line_policy(tmp_path: Path) -> None:
    policy = generate_policy(10_000, seed=7)
    write_policies(tmp_path, policy.text)
    authorizer, enforcer = Authorizer(tmp_path), reference_enforcer(tmp_path)
    requests = random_requests(policy, 2_000, seed=8)
    allowed = 0
    for request in requests:
        assert_agrees(authorizer, enforcer, request)
        allowed += authorizer.check(*request) is not None
    # Both answers are exercised, not only refusals.
    assert 0.2 < allowed / len(requests) < 0.8


# --- what does not load ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "p, pm, *, orders",
        "p, pm, *, orders, create, extra",
        "g, alice, pm",
        "p, pm, *, , create",
        "gg, alice, pm, fund-alpha",
    ],
)
def test_a_malformed_rule_does_not_load(tmp_path: Path, line: str) -> None:
    write_policies(tmp_path, demo_policy_plus(line))
    with pytest.raises(PolicyError):
        Authorizer(tmp_path)


def test_a_model_the_index_does_not_implement_does_not_load(tmp_path: Path) -> None:
    # The old matcher asked the firm-wide graph apart: the index implements the new one only.
    model = (POLICIES / "model.conf").read_text()
    other = model.replace(
        "m = g(r.sub, p.sub, r.dom)", 'm = g(r.sub, p.sub, r.dom) || r.sub == "root"'
    )
    assert other != model
    write_policies(tmp_path, (POLICIES / "policy.csv").read_text(), model_text=other)
    with pytest.raises(PolicyError, match="model"):
        Authorizer(tmp_path)
