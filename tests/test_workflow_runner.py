"""The workers' sandboxed runner answers serialization contexts as the SDK's instance would."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import CodeType
from typing import Any

import pytest
import temporalio.common
from temporalio import workflow
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.enums.v1.command_type_pb2 import CommandType
from temporalio.api.failure.v1 import Failure
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    ActivitySerializationContext,
    DataConverter,
    PayloadCodec,
    SerializationContext,
    WithSerializationContext,
    WorkflowSerializationContext,
)
from temporalio.worker import WorkflowInstanceDetails
from temporalio.worker._command_aware_visitor import CommandInfo

from domain.payload_codec import EncryptionCodec
from workflow_runner import (
    CompiledOnceLoader,
    ContextShortcut,
    uses_serialization_context,
    workflow_runner,
)
from workflows.order import OrderWorkflow

INFO = workflow.Info(
    attempt=1,
    continued_run_id=None,
    cron_schedule=None,
    execution_timeout=None,
    first_execution_run_id="run-1",
    headers={},
    namespace="desk",
    original_execution_run_id="run-1",
    parent=None,
    root=None,
    raw_memo={},
    retry_policy=None,
    run_id="run-1",
    run_timeout=None,
    search_attributes={},
    start_time=datetime(2026, 11, 26, tzinfo=UTC),
    workflow_start_time=datetime(2026, 11, 26, tzinfo=UTC),
    task_queue="orders",
    task_timeout=timedelta(seconds=10),
    typed_search_attributes=temporalio.common.TypedSearchAttributes.empty,
    workflow_id="order-ord_1",
    workflow_type="OrderWorkflowV2",
    priority=temporalio.common.Priority.default,
)
AN_ACTIVITY = CommandInfo(
    command_type=CommandType.COMMAND_TYPE_SCHEDULE_ACTIVITY_TASK, command_seq=1
)


class ContextAwareCodec(PayloadCodec, WithSerializationContext):
    """A codec that would encrypt per workflow, say: it takes a context."""

    def with_context(self, context: SerializationContext) -> ContextAwareCodec:
        return ContextAwareCodec()

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)


def details() -> WorkflowInstanceDetails:
    return WorkflowInstanceDetails(
        payload_converter_factory=pydantic_data_converter._new_payload_converter,
        failure_converter_class=pydantic_data_converter.failure_converter_class,
        interceptor_classes=[],
        defn=workflow._Definition.must_from_class(OrderWorkflow),
        info=INFO,
        randomness_seed=1,
        extern_functions={},
        disable_eager_activity_execution=False,
        worker_level_failure_exception_types=[],
        patch_activation_callback=None,
        last_completion_result=Payloads(),
        last_failure=Failure(),
    )


def test_the_oms_converter_ignores_serialization_contexts_with_or_without_the_codec() -> None:
    codec = EncryptionCodec({"k1": bytes(32)}, "k1")
    assert not uses_serialization_context(pydantic_data_converter)
    assert not uses_serialization_context(
        dataclasses.replace(pydantic_data_converter, payload_codec=codec)
    )
    assert uses_serialization_context(
        dataclasses.replace(pydantic_data_converter, payload_codec=ContextAwareCodec())
    )


@pytest.mark.parametrize("contexts_matter", [False, True])
async def test_the_own_context_is_the_one_the_sandboxed_instance_gives(
    contexts_matter: bool,
) -> None:
    converter: DataConverter = pydantic_data_converter
    if contexts_matter:
        converter = dataclasses.replace(converter, payload_codec=ContextAwareCodec())
    runner = workflow_runner(converter)
    assert runner.contexts_matter is contexts_matter
    shortcut = runner.create_instance(details())
    assert isinstance(shortcut, ContextShortcut)
    sandboxed = shortcut._sandboxed
    assert shortcut.get_serialization_context(None) == sandboxed.get_serialization_context(None)
    assert shortcut.get_external_store_context(None) == sandboxed.get_external_store_context(None)
    assert shortcut.get_info() is sandboxed.get_info()


def test_a_commands_context_goes_to_the_sandbox_only_when_contexts_matter() -> None:
    own = WorkflowSerializationContext(namespace=INFO.namespace, workflow_id=INFO.workflow_id)
    activitys = ActivitySerializationContext(
        namespace=INFO.namespace,
        activity_id="1",
        activity_type="project_events",
        activity_task_queue="orders",
        workflow_id=INFO.workflow_id,
        workflow_type=INFO.workflow_type,
        is_local=True,
    )

    class Sandboxed(ContextShortcut):
        """Stands for the sandboxed instance: answers for its activity, and notes who asked."""

        def __init__(self) -> None:
            self.asked: list[CommandInfo | None] = []

        def get_serialization_context(
            self, command_info: CommandInfo | None
        ) -> SerializationContext | None:
            self.asked.append(command_info)
            return activitys if command_info == AN_ACTIVITY else own

    for contexts_matter, asked, answer in ((True, [AN_ACTIVITY], activitys), (False, [], own)):
        sandboxed = Sandboxed()
        shortcut = ContextShortcut(sandboxed, INFO, contexts_matter=contexts_matter)
        assert shortcut.get_serialization_context(AN_ACTIVITY) == answer
        assert shortcut.get_serialization_context(None) == own
        assert sandboxed.asked == asked


async def test_each_run_imports_the_workflow_module_without_compiling_it_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compiled: list[str] = []
    compile_source = CompiledOnceLoader.source_to_code

    def counting(self: CompiledOnceLoader, data: bytes, path: str, **kwargs: Any) -> CodeType:
        compiled.append(path)
        return compile_source(self, data, path, **kwargs)

    monkeypatch.setattr(CompiledOnceLoader, "source_to_code", counting)
    monkeypatch.setattr(CompiledOnceLoader, "_codes", {})
    runner = workflow_runner(pydantic_data_converter)
    for _ in range(3):
        runner.create_instance(details())
    # Compiled at most once (not at all where Python's own bytecode cache has it), and kept.
    assert len([p for p in compiled if Path(p).name == "order.py"]) <= 1
    assert [path for path, _, _ in CompiledOnceLoader._codes if Path(path).name == "order.py"]
