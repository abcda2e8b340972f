"""The workflow sandbox as the OMS workers run it: our deterministic modules passed through, and
serialization contexts answered without entering the sandbox.

The SDK asks the workflow instance for a serialization context once per payload sequence it
converts (every activation and every completion, several passes each: about a hundred times
an order in `make bench`). The sandboxed instance answers each question by compiling and executing a snippet
inside the sandbox, which a profile of `make bench` put at a tenth of an order's CPU.

- A question about the workflow's own payloads (no command) has an answer fixed for the life of
  a run: it is computed here once, from the run's info, as the SDK's instance computes it.
- A question about a command's payloads (an activity's, mostly) needs the sandbox's state, but
  its answer changes nothing when the data converter ignores serialization contexts, as the
  OMS's does (pydantic JSON, then the AES-GCM codec, no external storage). Then it gets the
  workflow's own context too; with a converter that uses contexts it still goes to the sandbox.

The sandbox also imports the workflow modules afresh for every run. Where no bytecode cache can
be written (PYTHONDONTWRITEBYTECODE, a read-only checkout) each import compiled 2,400 lines
again; `CompiledOnceFinder` keeps each module's code object for the life of the process.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import CodeType, ModuleType
from typing import TYPE_CHECKING, ClassVar

from temporalio import workflow
from temporalio.bridge.proto.workflow_activation import WorkflowActivation
from temporalio.bridge.proto.workflow_completion import WorkflowActivationCompletion
from temporalio.converter import (
    ActivitySerializationContext,
    DataConverter,
    SerializationContext,
    StorageDriverStoreContext,
    StorageDriverWorkflowInfo,
    WorkflowSerializationContext,
)
from temporalio.worker import WorkflowInstance, WorkflowInstanceDetails
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

if TYPE_CHECKING:
    # The type of WorkflowInstance's parameters; not exported by the SDK.
    from temporalio.worker._command_aware_visitor import CommandInfo

# The sandbox re-imports every module a workflow imports on each run unless it is passed
# through. Ours are deterministic (domain/ is pure; workflows reach activities only by
# reference), and so are pydantic's, so they are loaded once and shared: a measured saving of
# most of a workflow task's CPU (see README, Performance).
PASSED_THROUGH = (
    "activities",
    "db",
    "domain",
    "venues",
    "workflows.messages",
    "pydantic",
    "pydantic_core",
    "annotated_types",
    # Signed authority is verified in validators (domain.authority).
    "cryptography",
    "sqlmodel",
    "sqlalchemy",
    "httpx",
)


# The modules the sandbox imports for each run (the rest are passed through).
SANDBOXED_PACKAGES = ("workflows",)


class CompiledOnceLoader(importlib.machinery.SourceFileLoader):
    """A source loader that compiles each version of a file once per process."""

    _codes: ClassVar[dict[tuple[str, int, int], CodeType]] = {}

    def get_code(self, fullname: str) -> CodeType:
        path = self.get_filename(fullname)
        status = os.stat(path)
        key = (path, status.st_mtime_ns, status.st_size)
        code = self._codes.get(key)
        if code is None:
            code = super().get_code(fullname)
            assert code is not None  # a source file always has code
            self._codes[key] = code
        return code


class CompiledOnceFinder(importlib.machinery.PathFinder):
    """Finds `SANDBOXED_PACKAGES`' modules as Python does, to load them with `CompiledOnceLoader`.

    A code object is immutable, so one can be executed into each run's own module.
    """

    @classmethod
    def find_spec(
        cls,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] not in SANDBOXED_PACKAGES:
            return None
        spec = super().find_spec(fullname, path, target)
        if spec is not None and type(spec.loader) is importlib.machinery.SourceFileLoader:
            spec.loader = CompiledOnceLoader(spec.loader.name, spec.loader.path)
        return spec


def compile_workflow_modules_once() -> None:
    """Put `CompiledOnceFinder` first on the import path of this process (once)."""
    if CompiledOnceFinder not in sys.meta_path:
        sys.meta_path.insert(0, CompiledOnceFinder)


def uses_serialization_context(converter: DataConverter) -> bool:
    """Return whether `converter` converts differently under some serialization context."""
    probe = ActivitySerializationContext(
        namespace="probe",
        activity_id="probe",
        activity_type="probe",
        activity_task_queue="probe",
        workflow_id="probe",
        workflow_type="probe",
        is_local=False,
    )
    return converter.with_context(probe) is not converter or converter.external_storage is not None


class ContextShortcut(WorkflowInstance):
    """A sandboxed workflow instance whose serialization contexts are answered outside it."""

    def __init__(
        self, sandboxed: WorkflowInstance, info: workflow.Info, *, contexts_matter: bool
    ) -> None:
        self._sandboxed = sandboxed
        self._contexts_matter = contexts_matter
        # What the SDK's instance returns for a payload of no command (its
        # get_serialization_context and get_external_store_context with command_info None).
        self._own_context = WorkflowSerializationContext(
            namespace=info.namespace, workflow_id=info.workflow_id
        )
        self._own_store_context = StorageDriverStoreContext(
            target=StorageDriverWorkflowInfo(
                id=info.workflow_id,
                run_id=info.run_id,
                type=info.workflow_type,
                namespace=info.namespace,
            )
        )

    def activate(self, act: WorkflowActivation) -> WorkflowActivationCompletion:
        return self._sandboxed.activate(act)

    def get_serialization_context(
        self, command_info: CommandInfo | None
    ) -> SerializationContext | None:
        if command_info is None or not self._contexts_matter:
            return self._own_context
        return self._sandboxed.get_serialization_context(command_info)

    def get_external_store_context(
        self, command_info: CommandInfo | None
    ) -> StorageDriverStoreContext:
        if command_info is None or not self._contexts_matter:
            return self._own_store_context
        return self._sandboxed.get_external_store_context(command_info)

    def get_info(self) -> workflow.Info:
        return self._sandboxed.get_info()

    def get_thread_id(self) -> int | None:
        # The worker's deadlock detector reads the stack of this thread.
        return self._sandboxed.get_thread_id()


@dataclass(frozen=True)
class ContextShortcutRunner(SandboxedWorkflowRunner):
    """The SDK's sandboxed runner, with `ContextShortcut` around each instance.

    `contexts_matter`: whether the workers' data converter uses serialization contexts (see
    `uses_serialization_context`); when it does, questions about commands go to the sandbox.
    """

    contexts_matter: bool = True

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        return ContextShortcut(
            super().create_instance(det), det.info, contexts_matter=self.contexts_matter
        )


def workflow_runner(converter: DataConverter) -> ContextShortcutRunner:
    """Return the sandboxed runner for workers whose client converts with `converter`."""
    compile_workflow_modules_once()
    return ContextShortcutRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSED_THROUGH),
        contexts_matter=uses_serialization_context(converter),
    )
