"""What the policy files' parsers share (`domain.approvals`, `domain.compliance_policy`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def check_keys(
    table: Mapping[str, object],
    allowed: set[str],
    required: Iterable[str],
    where: str,
    error: type[ValueError],
) -> None:
    """Refuse (with `error`) a table with a key not `allowed` or without a `required` one.

    An unknown key is most likely a misspelt one (min_notinal, sevrity), which would otherwise
    be ignored in silence and change who approves or what is checked.
    """
    for key in table:
        if key not in allowed:
            raise error(f"{where}: unknown key {key!r} (expected: {', '.join(sorted(allowed))})")
    for key in required:
        if key not in table:
            raise error(f"{where}: {key} is missing")
