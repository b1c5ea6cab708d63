"""Seed 004's in-process examples run as written (policies and the RAG workflow)."""

from typing import Any

import pytest
from seed_support import run_blocks, seed_blocks, stand_ins

from fuseline import Status, Workflow


def test_seed_004_policy_examples_run(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    waits: list[float] = []
    monkeypatch.setattr("fuseline.policies.retry.time.sleep", waits.append)
    blocks = seed_blocks("004")
    namespace = run_blocks(blocks[:4], stand_ins(), "seed 004")
    # RetryPolicy(max_retries=3, wait=1): four attempts, three waits of a second,
    # in the first example and again in the second.
    assert waits == [1, 1, 1, 1, 1, 1]
    step = namespace["step"]
    assert step.state is Status.FAILED
    assert [type(p).__name__ for p in step.policies] == ["RetryPolicy", "StepTimeoutPolicy"]
    wf = namespace["wf"]
    assert wf.run().status is Status.FAILED
    assert "running <Flaky" in capsys.readouterr().out


def test_seed_004_rag_workflow_runs_in_process() -> None:
    blocks = seed_blocks("004")
    rag = next(b for b in blocks if "class RetrieveDocs" in b)
    definitions = rag.split("engine = ProcessEngine")[0]
    namespace = run_blocks([definitions], stand_ins(), "seed 004 rag")
    workflow: Workflow = namespace["rag_workflow"]
    run = workflow.run({"query": "How does Fuseline work?"})
    assert run.status is Status.SUCCEEDED
    assert run.result == {"GenerateAnswer": "answer to 'How does Fuseline work?' from 2 docs"}
    schema = workflow.to_schema()
    assert schema.step("RetrieveDocs").timeout_seconds == 5.0
    assert schema.step("GenerateAnswer").max_attempts == 3
