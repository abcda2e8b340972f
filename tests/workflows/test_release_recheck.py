"""Compliance runs again at release: a new hard breach rejects, a new soft one needs an override.

Each test runs its own orders worker on a copy of the rules it can edit between approval and
release, as compliance would edit policies/compliance.toml while orders wait.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from activities.assessment import AssessmentActivities
from activities.portfolio import PortfolioActivities, ReadModelPrices
from db.engine import SessionFactory
from domain.errors import RefusalType
from domain.models import ExecType, OrderStatus
from tests.workflows.conftest import Desk, OrderHandle, kill_switch_engaged, wait_for_status
from tests.workflows.test_order_wedges import order_worker
from tests.workflows.test_order_workflow import approve_as, refusal_of, report_input, warned
from workflows.messages import CancelInput, OverrideInput, ReleaseInput
from workflows.order import OrderWorkflow


@pytest.fixture
def rules_dir(desk: Desk, tmp_path: Path) -> Path:
    shutil.copytree(desk.settings.policies_dir, tmp_path, dirs_exist_ok=True)
    return tmp_path


def add_rule(rules_dir: Path, table: str) -> None:
    path = rules_dir / "compliance.toml"
    path.write_text(path.read_text() + "\n" + table)


def compliance_on(rules_dir: Path, sessions: SessionFactory) -> AssessmentActivities:
    return AssessmentActivities(PortfolioActivities(sessions, ReadModelPrices(sessions)), rules_dir)


async def test_a_new_hard_breach_refuses_the_release_and_rejects_the_order(
    desk: Desk, layer_sessions: SessionFactory, rules_dir: Path
) -> None:
    compliance = compliance_on(rules_dir, layer_sessions)
    async with order_worker(desk, layer_sessions, compliance=compliance) as queue:
        handle = await desk.start(quantity="10", task_queue=queue)
        await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
        await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
        # Restricted while it waited for release.
        add_rule(
            rules_dir,
            '[[rules]]\nid = "alpha-aapl-restricted"\ntype = "restricted_list"\n'
            'severity = "fail"\nscope = "fund"\nfund = "fund-alpha"\n'
            'params = { symbols = ["AAPL"] }\n',
        )
        refused = await refusal_of(
            handle, OrderWorkflow.release, ReleaseInput(user="tom", venue="manual")
        )
        assert refused.type == RefusalType.COMPLIANCE_REFUSED
        assert "AAPL is on fund-alpha's restricted list" in refused.message
        state = await handle.query(OrderWorkflow.state)
        assert state.status is OrderStatus.COMPLIANCE_REJECTED
        assert state.status_reason.startswith("at release: ")
        assert (await handle.result()).status is OrderStatus.COMPLIANCE_REJECTED


async def test_a_new_soft_breach_returns_the_order_for_an_override(
    desk: Desk, layer_sessions: SessionFactory, rules_dir: Path
) -> None:
    compliance = compliance_on(rules_dir, layer_sessions)
    async with order_worker(desk, layer_sessions, compliance=compliance) as queue:
        handle = await desk.start(quantity="10", task_queue=queue)
        await wait_for_status(handle, OrderStatus.PENDING_APPROVAL)
        await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
        add_rule(
            rules_dir,
            '[[rules]]\nid = "alpha-tiny-soft-notional"\ntype = "max_order_notional"\n'
            'severity = "warn"\nscope = "fund"\nfund = "fund-alpha"\n'
            'params = { max_notional = "1000" }\n',
        )
        refused = await refusal_of(
            handle, OrderWorkflow.release, ReleaseInput(user="tom", venue="manual")
        )
        assert refused.type == RefusalType.COMPLIANCE_REFUSED
        assert "needs an override" in refused.message
        state = await handle.query(OrderWorkflow.state)
        assert state.status is OrderStatus.PENDING_OVERRIDE
        assert warned(state) == ["alpha-tiny-soft-notional"]
        await handle.execute_update(
            OrderWorkflow.override,
            OverrideInput(user="cora", justification="small ticket", rules=warned(state)),
        )
        # dana's approval stands: every level is approved, so the order is approved again.
        state = await wait_for_status(handle, OrderStatus.APPROVED)
        assert [g.user for g in state.approvals.given] == ["dana"]
        # The override accepts that warning: the release's re-check lets it through now.
        state = await handle.execute_update(
            OrderWorkflow.release, ReleaseInput(user="tom", venue="manual")
        )
        assert state.status is OrderStatus.RELEASED
        await close_at_the_manual_venue(desk, handle)


async def close_at_the_manual_venue(desk: Desk, handle: OrderHandle) -> None:
    """Cancel, and confirm as the manual venue would: no order is left waiting on a queue
    whose worker is gone (its timers would stop the test server from skipping time)."""
    await handle.execute_update(OrderWorkflow.cancel, CancelInput(user="tom", reason="done"))
    now = await desk.env.get_current_time()
    order_id = handle.id.removeprefix("order:")
    await handle.execute_update(
        OrderWorkflow.execution_report,
        report_input(order_id, f"x-{order_id}", ExecType.CANCELED, transact_time=now),
    )
    assert (await handle.result()).status is OrderStatus.CANCELED


async def test_a_kill_switch_holds_an_approved_order_until_it_is_lifted(
    desk: Desk, layer_sessions: SessionFactory
) -> None:
    """The API refuses a release while a switch is engaged; the order refuses it as well."""
    handle = await desk.start(quantity="10", created_by="bob", fund="fund-beta", allocations=[])
    await wait_for_status(handle, OrderStatus.APPROVED, OrderStatus.PENDING_APPROVAL)
    state = await handle.query(OrderWorkflow.state)
    if state.status is OrderStatus.PENDING_APPROVAL:
        await handle.execute_update(OrderWorkflow.approve, approve_as("dana"))
    with kill_switch_engaged(layer_sessions, "fund-beta", "desk drill"):
        refused = await refusal_of(
            handle, OrderWorkflow.release, ReleaseInput(user="tom", venue="manual")
        )
        assert refused.type == RefusalType.KILL_SWITCH_ENGAGED
        assert "cora" in refused.message and "desk drill" in refused.message
        assert (await handle.query(OrderWorkflow.state)).status is OrderStatus.APPROVED
    state = await handle.execute_update(
        OrderWorkflow.release, ReleaseInput(user="tom", venue="manual")
    )
    assert state.status is OrderStatus.RELEASED
    await close_at_the_manual_venue(desk, handle)
