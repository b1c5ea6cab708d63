"""Workflows, their schemas and the execution rules they follow."""

from fuseline.workflow._workflow import Dispatcher, Workflow
from fuseline.workflow.schema import (
    EdgeSchema,
    OrGroupSchema,
    RetrySchema,
    StepSchema,
    WorkflowSchema,
)

__all__ = [
    "Dispatcher",
    "EdgeSchema",
    "OrGroupSchema",
    "RetrySchema",
    "StepSchema",
    "Workflow",
    "WorkflowSchema",
]
