"""The policy on disk is put in force without a restart; one that does not load changes nothing."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from api.auth import Authorizer
from tests.policies.reference import POLICIES, write_policies

DEMO = (POLICIES / "policy.csv").read_text()
ALICE = "g, alice, pm, fund-alpha\n"
WITHOUT_ALICE = DEMO.replace(ALICE, "")
ALICE_CREATES = ("alice", "fund-alpha", "orders", "create")


def version_of(policies_dir: Path) -> str:
    files = (policies_dir / "model.conf").read_bytes() + (policies_dir / "policy.csv").read_bytes()
    return hashlib.sha256(files).hexdigest()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def load_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "api.auth" and r.levelno == logging.ERROR]


@pytest.fixture
def policies_dir(tmp_path: Path) -> Path:
    write_policies(tmp_path, DEMO)
    return tmp_path


def test_a_revoked_user_loses_access_without_a_new_authorizer(policies_dir: Path) -> None:
    authorizer = Authorizer(policies_dir, reload_interval=0)
    assert ALICE in DEMO
    assert authorizer.check(*ALICE_CREATES) is not None
    old_version = authorizer.policy_version

    write_policies(policies_dir, WITHOUT_ALICE)
    wait_until(lambda: authorizer.check(*ALICE_CREATES) is None)

    assert authorizer.policy_version == version_of(policies_dir) != old_version
    assert authorizer.is_known_user("alice") is False
    assert authorizer.roles("alice", "fund-alpha") == []
    assert authorizer.check("bob", "fund-beta", "orders", "create") is not None


def test_checks_look_at_the_files_at_most_once_per_interval(policies_dir: Path) -> None:
    authorizer = Authorizer(policies_dir, reload_interval=3600)
    write_policies(policies_dir, WITHOUT_ALICE)
    time.sleep(0.05)
    assert authorizer.check(*ALICE_CREATES) is not None

    assert authorizer.reload() is True
    assert authorizer.check(*ALICE_CREATES) is None
    assert authorizer.policy_version == version_of(policies_dir)


def test_the_version_names_the_exact_bytes(policies_dir: Path) -> None:
    authorizer = Authorizer(policies_dir, reload_interval=3600)
    before = authorizer.policy_version
    write_policies(policies_dir, DEMO + "# A comment changes no verdict, but it is another file.\n")
    assert authorizer.reload() is True
    assert authorizer.policy_version == version_of(policies_dir) != before
    grant = authorizer.check(*ALICE_CREATES)
    assert grant is not None
    assert grant.policy_version == authorizer.policy_version


@pytest.mark.parametrize(
    ("policy", "model"),
    [
        (DEMO + "p, pm, *, orders\n", None),
        (DEMO + "gx, alice, cio, fund-alpha\n", None),
        # The policy is rewritten unchanged first (write_policies): no verdict may move.
        (DEMO, "[request_definition]\nr = sub, dom, obj, act\n"),
        (DEMO, "this is not a model\n"),
        (DEMO.encode() + b"g, alice, cio, fund-\xff\n", None),
    ],
    ids=["short-rule", "unknown-rule-type", "incomplete-model", "garbage-model", "not-utf8"],
)
def test_a_policy_that_does_not_load_keeps_the_previous_one_in_force(
    policies_dir: Path, caplog: pytest.LogCaptureFixture, policy: str | bytes, model: str | None
) -> None:
    authorizer = Authorizer(policies_dir, reload_interval=0)
    version = authorizer.policy_version

    write_policies(policies_dir, policy, model_text=model)
    # The next check notices the change; the load fails in the background, logged once.
    wait_until(lambda: authorizer.check(*ALICE_CREATES) is not None and bool(load_errors(caplog)))
    for _ in range(20):
        assert authorizer.check(*ALICE_CREATES) is not None
    assert authorizer.policy_version == version
    assert len(load_errors(caplog)) == 1
    assert version in load_errors(caplog)[0].getMessage()

    # An explicit reload says so, and raises nothing either.
    assert authorizer.reload() is False
    assert authorizer.check(*ALICE_CREATES) is not None

    # Once the files are fixed, the next change is in force.
    write_policies(policies_dir, WITHOUT_ALICE, model_text=(POLICIES / "model.conf").read_text())
    wait_until(lambda: authorizer.check(*ALICE_CREATES) is None)
    assert authorizer.policy_version == version_of(policies_dir)


def test_a_missing_file_keeps_the_policy_in_force(
    policies_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    authorizer = Authorizer(policies_dir, reload_interval=0)
    (policies_dir / "policy.csv").unlink()
    wait_until(lambda: authorizer.check(*ALICE_CREATES) is not None and bool(load_errors(caplog)))
    assert authorizer.check(*ALICE_CREATES) is not None
    assert len(load_errors(caplog)) == 1

    write_policies(policies_dir, WITHOUT_ALICE)
    wait_until(lambda: authorizer.check(*ALICE_CREATES) is None)


def test_checks_never_see_a_half_built_index(policies_dir: Path) -> None:
    # Policy A lets alice create in fund-alpha; policy B lets bob instead. Every grant a check
    # returns while the two alternate must come whole from the policy that allows it.
    policy_a = DEMO
    policy_b = WITHOUT_ALICE + "g, bob, pm, fund-alpha\n"
    versions = {}
    for name, text in [("a", policy_a), ("b", policy_b)]:
        write_policies(policies_dir, text)
        versions[name] = version_of(policies_dir)
    write_policies(policies_dir, policy_a)
    authorizer = Authorizer(policies_dir, reload_interval=0)
    stop = threading.Event()
    failures: list[str] = []
    seen: set[str] = set()

    def hammer() -> None:
        while not stop.is_set():
            for user, allowed_in in [("alice", "a"), ("bob", "b")]:
                grant = authorizer.check(user, "fund-alpha", "orders", "create")
                if grant is None:
                    continue
                seen.add(grant.policy_version)
                if grant.policy_version != versions[allowed_in] or grant.roles != ("pm",):
                    failures.append(f"{user}: {grant}")

    readers = [threading.Thread(target=hammer) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        for round_ in range(8):
            write_policies(policies_dir, policy_b if round_ % 2 == 0 else policy_a)
            assert authorizer.reload() is True
            time.sleep(0.01)
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    assert failures == []
    assert seen == set(versions.values())
