"""Casbin as the reference the Authorizer's index is held to, and policy files to test with."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import casbin

from api.auth import firm_wide_grants_hold_in_every_fund

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def reference_enforcer(policies_dir: Path) -> casbin.Enforcer:
    """Casbin as documented, reading the files itself, with the Authorizer's domain matching."""
    enforcer = casbin.Enforcer(str(policies_dir / "model.conf"), str(policies_dir / "policy.csv"))
    enforcer.add_named_domain_matching_func("g", firm_wide_grants_hold_in_every_fund)
    return enforcer


def write_policies(
    policies_dir: Path, policy_text: str | bytes, model_text: str | None = None
) -> None:
    """Put a policy (and the real model, unless given another) in `policies_dir`.

    Each file is renamed into place, as a deployment should: a reader never sees half a file.
    The policy goes first, then the model.
    """
    policies_dir.mkdir(parents=True, exist_ok=True)
    for name, text in [("policy.csv", policy_text), ("model.conf", model_text)]:
        target = policies_dir / name
        if text is None:
            if not target.exists():
                shutil.copyfile(POLICIES / name, target)
            continue
        staging = policies_dir / f".{name}.new"
        staging.write_bytes(text.encode() if isinstance(text, str) else text)
        os.replace(staging, target)
