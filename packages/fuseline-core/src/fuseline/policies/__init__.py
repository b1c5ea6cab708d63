"""Policies: retries, timeouts and your own hooks around steps and workflows."""

from fuseline.policies.base import StepPolicy, WorkflowPolicy
from fuseline.policies.retry import RetryPolicy
from fuseline.policies.timeout import StepTimeoutPolicy

__all__ = ["RetryPolicy", "StepPolicy", "StepTimeoutPolicy", "WorkflowPolicy"]
