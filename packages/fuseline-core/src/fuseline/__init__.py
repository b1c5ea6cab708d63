"""Fuseline: typed workflows of steps, run in-process or by workers through a broker."""

__path__ = __import__("pkgutil").extend_path(__path__, __name__)

from importlib.metadata import PackageNotFoundError, version

from fuseline.conditions import Condition
from fuseline.depends import Depends
from fuseline.engines import PoolEngine
from fuseline.errors import FuselineError
from fuseline.messages import (
    RunDetails,
    RunSummary,
    StepAssignment,
    StepError,
    StepRecord,
    StepReport,
)
from fuseline.policies import RetryPolicy, StepPolicy, StepTimeoutPolicy, WorkflowPolicy
from fuseline.status import Status
from fuseline.step import AsyncStep, Step
from fuseline.workflow import Workflow, WorkflowSchema

try:
    __version__ = version("fuseline-core")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AsyncStep",
    "Condition",
    "Depends",
    "FuselineError",
    "PoolEngine",
    "RetryPolicy",
    "RunDetails",
    "RunSummary",
    "Status",
    "Step",
    "StepAssignment",
    "StepError",
    "StepPolicy",
    "StepRecord",
    "StepReport",
    "StepTimeoutPolicy",
    "Workflow",
    "WorkflowPolicy",
    "WorkflowSchema",
    "__version__",
]
