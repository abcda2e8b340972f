"""Splitting an executed block across accounts: pro-rata, lot-rounded, deterministic remainder."""

from __future__ import annotations

import math
from decimal import ROUND_FLOOR, Decimal

from domain.models import Allocation, AllocationRequest


def allocate(
    requests: list[AllocationRequest],
    executed: Decimal,
    price: Decimal,
    lot_size: Decimal = Decimal(1),
) -> list[Allocation]:
    """Split `executed` across the requesting accounts, pro-rata to what each asked for.

    Each account first gets its pro-rata share rounded down to whole lots. The lots left over go
    one at a time to the accounts with the largest rounding remainder (ties: the account listed
    first), never taking an account past what it asked for; a final odd lot smaller than
    `lot_size` goes the same way. The result always sums to `executed`, and every account books at
    the block's average `price`. Accounts that get nothing are left out.
    """
    if executed <= 0 or not requests:
        return []
    total_requested = sum((r.quantity for r in requests), Decimal(0))
    if executed > total_requested:
        raise ValueError(f"cannot allocate {executed}: accounts asked for only {total_requested}")
    if lot_size <= 0:
        raise ValueError("lot_size must be positive")
    shares: list[Decimal] = []
    remainders: list[Decimal] = []
    for request in requests:
        ideal = executed * request.quantity / total_requested
        lots = (ideal / lot_size).to_integral_value(rounding=ROUND_FLOOR)
        shares.append(lots * lot_size)
        remainders.append(ideal - lots * lot_size)
    left = executed - sum(shares, Decimal(0))
    order = sorted(range(len(requests)), key=lambda i: (-remainders[i], i))
    while left > 0:
        progressed = False
        for i in order:
            if left <= 0:
                break
            room = requests[i].quantity - shares[i]
            step = min(lot_size, left, room)
            if step > 0:
                shares[i] += step
                left -= step
                progressed = True
        if not progressed:  # pragma: no cover - impossible while executed <= total_requested
            raise AssertionError("allocation remainder could not be placed")
    return [
        Allocation(account=r.account, requested_quantity=r.quantity, quantity=q, price=price)
        for r, q in zip(requests, shares, strict=True)
        if q > 0
    ]


def rescaled(
    requests: list[AllocationRequest], quantity: Decimal, lot_size: Decimal = Decimal(1)
) -> list[AllocationRequest]:
    """Return the accounts' shares of an amended order `quantity`, pro-rata to what each asked.

    Shares round as `allocate` rounds fills. An empty list (the fund's default account) stays
    empty; an account whose share rounds to nothing drops out.
    """
    total = sum((r.quantity for r in requests), Decimal(0))
    if not requests or quantity == total:
        return list(requests)
    # `allocate` never gives an account more than it asked for: scaling every request by the
    # same whole factor keeps the proportions and leaves room for a larger order.
    factor = max(1, math.ceil(quantity / total))
    scaled = [r.model_copy(update={"quantity": r.quantity * factor}) for r in requests]
    return [
        AllocationRequest(account=a.account, quantity=a.quantity)
        for a in allocate(scaled, quantity, Decimal(1), lot_size)
    ]
