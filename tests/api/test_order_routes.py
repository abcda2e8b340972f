"""The API remembers each order's fund and workflow type (they never change), within a bound."""

from __future__ import annotations

from api.deps import OrderRoutes


def test_a_remembered_route_is_given_back_and_the_least_recently_used_is_forgotten() -> None:
    routes = OrderRoutes(size=2)
    assert routes.get("ord_a") is None
    routes.remember("ord_a", ("fund-alpha", "OrderWorkflowV2"))
    routes.remember("ord_b", ("fund-beta", "OrderWorkflowV2"))
    assert routes.get("ord_a") == ("fund-alpha", "OrderWorkflowV2")  # now the most recent
    routes.remember("ord_c", ("fund-alpha", "OrderWorkflow"))
    assert routes.get("ord_b") is None
    assert routes.get("ord_a") == ("fund-alpha", "OrderWorkflowV2")
    assert routes.get("ord_c") == ("fund-alpha", "OrderWorkflow")
