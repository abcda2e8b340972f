"""Who the caller is (bearer JWT) and what Casbin lets them do."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import casbin


@dataclass(frozen=True)
class Grant:
    """An allowed request and the policy rule that allowed it (kept for the audit trail)."""

    policy: list[str]


class Authorizer:
    """Casbin RBAC with domains: (user, fund, object, action), from `policies/`."""

    def __init__(self, policies_dir: Path) -> None:
        self._enforcer = casbin.Enforcer(
            str(policies_dir / "model.conf"), str(policies_dir / "policy.csv")
        )
        # Casbin parses matchers with `ast` on every call, which is not safe across threads on
        # CPython 3.11 ("AST constructor recursion depth mismatch" under load): one at a time.
        self._lock = threading.Lock()

    def check(self, user: str, fund: str, obj: str, action: str) -> Grant | None:
        """Return the grant when `user` may do `action` on `obj` in `fund`, else None."""
        with self._lock:
            allowed, rule = self._enforcer.enforce_ex(user, fund, obj, action)
        return Grant(policy=list(rule)) if allowed else None

    def funds_allowed(self, user: str, funds: Iterable[str], obj: str, action: str) -> list[str]:
        """Return the funds among `funds` in which `user` may do `action` on `obj`."""
        return [fund for fund in funds if self.check(user, fund, obj, action) is not None]

    def is_known_user(self, user: str) -> bool:
        """Tell whether the policy grants `user` any role."""
        return any(rule[0] == user for rule in self._enforcer.get_grouping_policy())
