"""What Casbin lets a caller do, answered from an index of the policy in force.

Casbin parses `policies/model.conf` and `policies/policy.csv` and resolves roles; from what it
returns, `Authorizer` builds an index when the policy loads, so that a check is a few dict
lookups (pycasbin evaluates the matcher against every policy line: tens of milliseconds at ten
thousand lines). The index implements exactly the model's matcher, which is why a model.conf
with another matcher is refused rather than answered wrongly; the tests in tests/policies prove
that the index and Casbin's `enforce_ex` agree.

When either file changes on disk the policy is reloaded without a restart, and a file that does
not load leaves the previous policy in force.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import casbin
from casbin.model import Model
from casbin.persist.adapter import Adapter, load_policy_line

logger = logging.getLogger(__name__)

MODEL_FILE = "model.conf"
POLICY_FILE = "policy.csv"

FIRM_WIDE = "*"
"""As a grant's fund: the role is held in every fund. As a policy's fund: it holds in every fund."""

# The model the index implements, as Casbin parses it (whitespace aside). Any other model is
# refused: answering it with this index would be answering a different policy.
_SUPPORTED_MODEL: dict[tuple[str, str], str] = {
    ("r", "r"): "sub, dom, obj, act",
    ("p", "p"): "sub, dom, obj, act",
    ("g", "g"): "_, _, _",
    ("e", "e"): "some(where (p_eft == allow))",
    ("m", "m"): 'g(r_sub, p_sub, r_dom) && (p_dom == "*" || r_dom == p_dom)'
    " && r_obj == p_obj && r_act == p_act",
}

# Fields per rule type. Casbin keeps a short or long rule and fails on it at enforce time, and
# skips a line of an unknown type: either would quietly change who may do what, so both refuse
# the file instead.
_RULE_FIELDS = {"p": 4, "g": 3}

# (user, role, fund) lines and (role, fund, object, action) lines, as Casbin lists them.
_Rule = tuple[str, ...]
# Per file: (mtime_ns, ctime_ns, size, inode), or None when the file cannot be stat'ed.
_FileStamp = tuple[int, int, int, int] | None


class PolicyError(ValueError):
    """The policy files do not load: the model is not the supported one, or a rule is malformed."""


@dataclass(frozen=True)
class Grant:
    """An allowed request and the evidence for the audit trail.

    Attributes:
        policy: The `p` rule that allowed it: role, fund, object, action.
        policy_version: sha256 (hex) of the bytes of model.conf then policy.csv that were in
            force, so `cat model.conf policy.csv | sha256sum` names the files that decided.
        roles: The caller's effective roles in the fund (inherited and firm-wide ones included),
            sorted.
    """

    policy: list[str]
    policy_version: str = ""
    roles: tuple[str, ...] = ()


def firm_wide_grants_hold_in_every_fund(fund: str, grant_fund: str) -> bool:
    """Tell Casbin's role manager whether a grant made in `grant_fund` counts in `fund`.

    A fund's role graph is its own grants plus the firm-wide ones, so a role chain may mix them:
    `g, hank, head_of_trading, fund-alpha` with `g, head_of_trading, desk_head, *` makes hank a
    desk head in fund-alpha. Casbin calls this only for two different domains.
    """
    return grant_fund == FIRM_WIDE


class _TextAdapter(Adapter):  # type: ignore[misc]  # casbin ships no type information
    """Feed Casbin the policy from text already read, so the version hashed is the one parsed."""

    def __init__(self, text: str) -> None:
        self._text = text

    def load_policy(self, model: Model) -> None:
        # Lines end at \n only, as in Casbin's FileAdapter (strip() takes a \r).
        for number, raw in enumerate(self._text.split("\n"), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            rule_type = line.split(",", 1)[0].strip()
            fields = _RULE_FIELDS.get(rule_type)
            if fields is None:
                raise PolicyError(f"{POLICY_FILE}:{number}: unknown rule type {rule_type!r}")
            load_policy_line(line, model)
            rule = model.model[rule_type][rule_type].policy[-1]
            if len(rule) != fields or not all(rule):
                raise PolicyError(
                    f"{POLICY_FILE}:{number}: a {rule_type!r} rule takes {fields} non-empty "
                    f"fields, not {rule!r}"
                )


def build_enforcer(model_text: str, policy_text: str) -> casbin.Enforcer:
    """Return a Casbin enforcer for the model and policy, set up as the Authorizer reads them.

    Raises:
        PolicyError: The model is not the one the Authorizer implements, or a rule is malformed.
    """
    model = Model()
    try:
        model.load_model_from_text(model_text)
    # Casbin's config parser raises RuntimeError, among others, on a file it cannot read.
    except Exception as error:
        raise PolicyError(f"{MODEL_FILE} does not parse: {error}") from error
    _require_supported_model(model)
    enforcer = casbin.Enforcer(model, _TextAdapter(policy_text))
    enforcer.add_named_domain_matching_func("g", firm_wide_grants_hold_in_every_fund)
    # Casbin's domain role manager matches role names with `==` by default: a "pattern" that
    # matches nothing but itself, so it links nothing, yet it scans every role for every grant
    # when a fund's role graph is built (seconds at ten thousand lines). No pattern matching is
    # the same answer without the scans (tests/policies compare with a default enforcer).
    enforcer.add_named_matching_func("g", None)
    return enforcer


def _require_supported_model(model: Model) -> None:
    found = {
        (section, key): assertion.value
        for section, assertions in model.model.items()
        for key, assertion in assertions.items()
    }

    def squeeze(text: str) -> str:
        return "".join(text.split())

    if {k: squeeze(v) for k, v in found.items()} != {
        k: squeeze(v) for k, v in _SUPPORTED_MODEL.items()
    }:
        raise PolicyError(
            f"{MODEL_FILE} is not the model api/auth.py implements (change both together): "
            f"found {found}"
        )


@dataclass(frozen=True)
class _Index:
    """One loaded policy, answered by dict lookups. Never mutated: a reload builds another."""

    version: str
    firm_roles: Mapping[str, tuple[str, ...]]
    """Subject -> its sorted effective roles in a fund that grants it nothing of its own."""
    fund_roles: Mapping[str, Mapping[str, tuple[str, ...]]]
    """Fund -> subject -> roles, for the subjects whose roles there differ from firm_roles."""
    rules: Mapping[tuple[str, str], Mapping[str, Mapping[str, tuple[int, _Rule]]]]
    """(object, action) -> policy fund -> role -> (position in the policy, rule)."""
    users: frozenset[str]
    holders: Mapping[str, Mapping[str, frozenset[str]]]
    """Fund ("*" for firm_roles) -> role -> the users holding it there."""

    def roles_in(self, subject: str, fund: str) -> tuple[str, ...]:
        in_fund = self.fund_roles.get(fund)
        if in_fund is not None:
            roles = in_fund.get(subject)
            if roles is not None:
                return roles
        return self.firm_roles.get(subject, ())

    def grant(self, subject: str, fund: str, obj: str, action: str) -> Grant | None:
        by_fund = self.rules.get((obj, action))
        if by_fund is None:
            return None
        roles = self.roles_in(subject, fund)
        best: tuple[int, _Rule] | None = None
        for policy_fund in (fund, FIRM_WIDE) if fund != FIRM_WIDE else (FIRM_WIDE,):
            by_role = by_fund.get(policy_fund)
            if by_role is None:
                continue
            # Casbin's role manager links every name to itself, so the subject's own name is
            # matched against the rules' subjects too (see tests/policies).
            for role in (subject, *roles):
                hit = by_role.get(role)
                # Casbin answers with the first matching line of the policy: so does the index.
                if hit is not None and (best is None or hit[0] < best[0]):
                    best = hit
        if best is None:
            return None
        return Grant(policy=list(best[1]), policy_version=self.version, roles=roles)

    def users_with(self, fund: str, obj: str, action: str) -> set[str]:
        by_fund = self.rules.get((obj, action), {})
        granting = {
            role for policy_fund in {fund, FIRM_WIDE} for role in by_fund.get(policy_fund, {})
        }
        firm, in_fund = self.holders.get(FIRM_WIDE, {}), self.holders.get(fund, {})
        # A fund's role graph contains the firm-wide one, so holding a role firm-wide means
        # holding it in the fund as well.
        return {
            user
            for role in granting
            for holders in (firm.get(role, frozenset()), in_fund.get(role, frozenset()))
            for user in holders
        }


def _build_index(model_bytes: bytes, policy_bytes: bytes) -> _Index:
    try:
        model_text, policy_text = model_bytes.decode(), policy_bytes.decode()
    except UnicodeDecodeError as error:
        raise PolicyError(f"the policy files are not UTF-8: {error}") from error
    enforcer = build_enforcer(model_text, policy_text)
    grants: list[_Rule] = [tuple(rule) for rule in enforcer.get_grouping_policy()]
    policies: list[_Rule] = [tuple(rule) for rule in enforcer.get_policy()]
    manager = enforcer.get_role_manager()
    depth: int = manager.max_hierarchy_level

    def effective_roles(subject: str, fund: str) -> tuple[str, ...]:
        # Casbin's has_link walks at most `depth` levels, the subject itself being the first:
        # the roles reachable in fewer than `depth` steps of the fund's graph, as Casbin
        # resolves that graph (its domain matching included).
        seen = {subject}
        frontier = [subject]
        for _ in range(depth - 1):
            frontier = [
                role
                for name in frontier
                for role in manager.get_roles(name, fund)
                if role not in seen
            ]
            seen.update(frontier)
            if not frontier:
                break
        seen.discard(subject)
        return tuple(sorted(seen))

    firm_roles = {
        subject: effective_roles(subject, FIRM_WIDE)
        for subject in {user for user, _, fund in grants if fund == FIRM_WIDE}
    }
    granted_in: dict[str, set[str]] = {}
    for user, _, fund in grants:
        if fund != FIRM_WIDE:
            granted_in.setdefault(fund, set()).add(user)
    fund_roles: dict[str, dict[str, tuple[str, ...]]] = {}
    for fund, granted in granted_in.items():
        # Only a subject whose walk can meet a grant of this fund may have other roles here
        # than firm-wide: itself granted here, or holding firm-wide a role granted here.
        candidates = granted | {
            subject for subject, roles in firm_roles.items() if not granted.isdisjoint(roles)
        }
        differing = {
            subject: roles
            for subject in candidates
            if (roles := effective_roles(subject, fund)) != firm_roles.get(subject, ())
        }
        if differing:
            fund_roles[fund] = differing

    rules: dict[tuple[str, str], dict[str, dict[str, tuple[int, _Rule]]]] = {}
    for position, rule in enumerate(policies):
        role, fund, obj, action = rule
        # The first line wins, as it does in Casbin's enforce_ex.
        rules.setdefault((obj, action), {}).setdefault(fund, {}).setdefault(role, (position, rule))

    role_names = {role for _, role, _ in grants} | {role for role, *_ in policies}
    users = frozenset(user for user, _, _ in grants) - role_names
    holders: dict[str, dict[str, set[str]]] = {}
    for fund, by_subject in [(FIRM_WIDE, firm_roles), *fund_roles.items()]:
        for subject, held in by_subject.items():
            if subject in users:
                for role in held:
                    holders.setdefault(fund, {}).setdefault(role, set()).add(subject)

    return _Index(
        version=hashlib.sha256(model_bytes + policy_bytes).hexdigest(),
        firm_roles=firm_roles,
        fund_roles=fund_roles,
        rules=rules,
        users=users,
        holders={
            fund: {role: frozenset(held_by) for role, held_by in by_role.items()}
            for fund, by_role in holders.items()
        },
    )


class Authorizer:
    """Casbin RBAC with domains, (user, fund, object, action), from `policies/`.

    Thread-safe: a check reads one immutable index; a reload builds a new one and swaps it in.
    A check looks at most every `reload_interval` seconds whether either file changed on disk
    (two stat calls); if so a background thread loads them, and checks go on with the policy in
    force until the new one is ready. A policy that does not load is logged and changes nothing.
    """

    def __init__(self, policies_dir: Path, *, reload_interval: float = 1.0) -> None:
        """Load the policy in `policies_dir`.

        Args:
            policies_dir: Holds model.conf and policy.csv.
            reload_interval: At most how often (seconds) a check looks whether the files
                changed on disk.

        Raises:
            PolicyError: The files do not load (there is no previous policy to keep).
            OSError: A file cannot be read.
        """
        self._model_path = policies_dir / MODEL_FILE
        self._policy_path = policies_dir / POLICY_FILE
        self._reload_interval = reload_interval
        # Held while a policy loads, so one loads at a time. Checks never wait for it.
        self._reload_lock = threading.Lock()
        self._stamps = self._stat()
        self._index = _build_index(self._model_path.read_bytes(), self._policy_path.read_bytes())
        self._next_poll = time.monotonic() + reload_interval

    @property
    def policy_version(self) -> str:
        """sha256 (hex) of the bytes of model.conf then policy.csv in force."""
        return self._current().version

    def check(self, user: str, fund: str, obj: str, action: str) -> Grant | None:
        """Return the grant when `user` may do `action` on `obj` in `fund`, else None."""
        return self._current().grant(user, fund, obj, action)

    def funds_allowed(self, user: str, funds: Iterable[str], obj: str, action: str) -> list[str]:
        """Return the funds among `funds` in which `user` may do `action` on `obj`."""
        index = self._current()
        return [fund for fund in funds if index.grant(user, fund, obj, action) is not None]

    def roles(self, user: str, fund: str) -> list[str]:
        """Return `user`'s effective roles in `fund` (inherited and firm-wide included), sorted."""
        return list(self._current().roles_in(user, fund))

    def users_with(self, fund: str, obj: str, action: str) -> list[str]:
        """Return every user who may do `action` on `obj` in `fund`, sorted (to notify them)."""
        return sorted(self._current().users_with(fund, obj, action))

    def is_known_user(self, user: str) -> bool:
        """Tell whether the policy grants `user` a role (a role's own name is not a user)."""
        return user in self._current().users

    def reload(self) -> bool:
        """Load the files as they are on disk now, changed or not, before returning.

        Returns:
            True when they are in force; False when they did not load (logged), and the
            previous policy stays in force.
        """
        with self._reload_lock:
            return self._load()

    def _current(self) -> _Index:
        if time.monotonic() >= self._next_poll:
            self._poll()
        return self._index

    def _poll(self) -> None:
        # One caller looks; the others go on with the policy in force rather than wait.
        if not self._reload_lock.acquire(blocking=False):
            return
        handed_over = False
        try:
            now = time.monotonic()
            if now < self._next_poll:
                return
            self._next_poll = now + self._reload_interval
            if self._stat() == self._stamps:
                return
            # Loading ten thousand lines takes about half a second: not in a request, which
            # may be on the event loop. The thread releases the lock when it is done.
            threading.Thread(target=self._load_then_release, name="policy-reload").start()
            handed_over = True
        except Exception:
            logger.exception("could not start loading the changed policy; the next poll retries")
        finally:
            if not handed_over:
                self._reload_lock.release()

    def _load_then_release(self) -> None:
        try:
            self._load()
        finally:
            self._reload_lock.release()

    def _stat(self) -> tuple[_FileStamp, _FileStamp]:
        def stamp(path: Path) -> _FileStamp:
            try:
                st = path.stat()
            except OSError:
                return None
            # ctime and inode as well: a copy that keeps the old mtime and size, or a file
            # renamed into place, is still a change.
            return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)

        return stamp(self._model_path), stamp(self._policy_path)

    def _load(self) -> bool:
        # Stamp before reading: a write that lands after the stamp shows at the next poll. A
        # failed load keeps its stamps too, so a broken file is reported once, not every poll.
        self._stamps = self._stat()
        try:
            index = _build_index(self._model_path.read_bytes(), self._policy_path.read_bytes())
        # Casbin raises assorted exception types on a malformed model; none may reach a check.
        except Exception:
            logger.exception(
                "policy in %s did not load; policy %s stays in force",
                self._policy_path.parent,
                self._index.version,
            )
            return False
        if index.version != self._index.version:
            logger.info("policy %s in force (was %s)", index.version, self._index.version)
        # One reference assignment: a check sees the old index or the new one, never a mix.
        self._index = index
        return True
