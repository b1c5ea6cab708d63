"""Every worker example of the seed documents runs as written.

Seeds 001 (ProcessEngine and the hand-written loop), 002 (dispatch, then
work) and 004 (the broker/worker split, the custom-worker fragment and the RAG
worker), with stand-ins for ``search_vector_store`` and ``call_llm``. The
helpers that find and run the seeds' code blocks are shared with
``tests-integration/``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests-integration"))

from seed_support import install_module, run_blocks, seed_blocks, stand_ins

from fuseline import Status, StepReport, Workflow
from fuseline.broker import MemoryBroker
from fuseline.clients import LocalBrokerClient

QUERY = "How does Fuseline work?"
ANSWER = f"answer to {QUERY!r} from 2 docs"


def rag_block() -> str:
    return next(b for b in seed_blocks("004") if "class RetrieveDocs" in b)


def seed_rag_workflow() -> Workflow:
    """The RAG workflow exactly as seed 004 defines it (without its last two lines)."""
    definitions = rag_block().split("engine = ProcessEngine")[0]
    workflow: Workflow = run_blocks([definitions], stand_ins(), "seed 004 rag")["rag_workflow"]
    return workflow


@pytest.fixture
def my_workflows(monkeypatch: pytest.MonkeyPatch) -> Workflow:
    """``my_workflows``/``my_workflow``: the modules the seeds import their workflow from."""
    workflow = seed_rag_workflow()
    for name in ("my_workflows", "my_workflow"):
        monkeypatch.delitem(sys.modules, name, raising=False)
        install_module(name, rag_workflow=workflow)
    return workflow


def test_seed_001_process_engine_example(my_workflows: Workflow) -> None:
    first = seed_blocks("001")[0]
    namespace = run_blocks([first], stand_ins(), "seed 001")
    # work() on an empty broker returned at once; dispatch and work again.
    broker, engine = namespace["broker"], namespace["engine"]
    run_id = broker.dispatch_workflow(my_workflows.to_schema(), {"query": QUERY})
    assert engine.work() == 2
    run = namespace["client"].get_run(run_id)
    assert run.status is Status.SUCCEEDED
    assert run.result == {"GenerateAnswer": ANSWER}


def test_seed_001_hand_written_worker_loop(my_workflows: Workflow) -> None:
    broker = MemoryBroker()
    runs = [
        broker.dispatch_workflow(my_workflows.to_schema(), {"query": q}) for q in (QUERY, "Why?")
    ]
    namespace: dict[str, Any] = stand_ins() | {
        "broker": broker,
        "workflow": my_workflows,
        "step_lookup": my_workflows.step_map,
        "StepReport": StepReport,
        "LocalBrokerClient": LocalBrokerClient,
    }
    run_blocks([seed_blocks("001")[1]], namespace, "seed 001 loop")
    client = LocalBrokerClient(broker)
    assert [client.get_run(r).result for r in runs] == [
        {"GenerateAnswer": ANSWER},
        {"GenerateAnswer": "answer to 'Why?' from 2 docs"},
    ]


def test_seed_002_dispatch_then_work() -> None:
    namespace = stand_ins() | {"workflow": seed_rag_workflow()}
    namespace["workflow"].params["query"] = QUERY  # the seed dispatches without inputs
    run_blocks(seed_blocks("002"), namespace, "seed 002")
    run = namespace["client"].get_run(namespace["instance"])
    assert run.status is Status.SUCCEEDED
    assert run.result == {"GenerateAnswer": ANSWER}


def test_seed_004_broker_worker_split_and_rag_worker(my_workflows: Workflow) -> None:
    blocks = seed_blocks("004")
    start = next(i for i, b in enumerate(blocks) if "BROKER = MemoryBroker()" in b)
    split = blocks[start : start + 3]  # broker, worker, dispatch
    assert "ProcessEngine(BROKER" in split[1] and "dispatch_workflow" in split[2]
    namespace = run_blocks(split, stand_ins(), "seed 004 split")
    broker = namespace["BROKER"]
    instance = namespace["instance"]
    # The worker ran before anything was dispatched: the run is still waiting.
    assert broker.get_run(instance).status is not Status.SUCCEEDED
    # The RAG example's worker (same workflow id and version) picks it up.
    run_blocks([rag_block()], namespace, "seed 004 rag worker")
    run = broker.get_run(instance)
    assert run.status is Status.SUCCEEDED
    assert run.result == {"GenerateAnswer": ANSWER}


def test_seed_004_custom_worker_fragment(my_workflows: Workflow) -> None:
    fragment = next(b for b in seed_blocks("004") if "build_shared_dict" in b)
    broker = MemoryBroker()
    run_id = broker.dispatch_workflow(my_workflows.to_schema(), {"query": QUERY})
    namespace: dict[str, Any] = stand_ins() | {
        "broker": broker,
        "worker_id": broker.register_worker([my_workflows.to_schema()]),
        "workflow": my_workflows,
        "workflow_step_map": my_workflows.step_map,
        "build_shared_dict": lambda payload: payload.get("results", {}),
        "StepReport": StepReport,
    }
    for _ in my_workflows.steps:  # the fragment handles one step; run it once per step
        my_workflows.params.update({"query": QUERY})
        run_blocks([fragment], namespace, "seed 004 custom worker")
    run = broker.get_run(run_id)
    assert run.status is Status.SUCCEEDED
    assert run.result == {"GenerateAnswer": ANSWER}
