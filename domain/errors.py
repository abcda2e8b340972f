"""Business refusal types: the `type` of non-retryable ApplicationErrors, mapped by the API to HTTP."""

from __future__ import annotations

from enum import StrEnum


class RefusalType(StrEnum):
    INVALID_STATE = "OrderStateConflict"  # 409: the order's status does not allow the action
    FORBIDDEN = "Forbidden"  # 403: segregation of duties or level not permitted
    INVALID_INPUT = "InvalidInput"  # 422: the request names something that does not exist
    VENUE_REFUSED = "VenueRefused"  # the venue would not take the order
    DUPLICATE = "Duplicate"  # 200: the same message was already taken; nothing changes
    EXECUTION_REFUSED = "ExecutionRefused"  # 409: an execution report the order cannot take
    COMPLIANCE_REFUSED = "ComplianceRefused"  # 409: compliance's re-check refused the release
    KILL_SWITCH_ENGAGED = "KillSwitchEngaged"  # 423: a kill switch covers the order's fund
