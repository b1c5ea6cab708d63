"""The distributed path over real HTTP: a server process, workers and an application.

Each test runs against the embedded SQLite backend and against PostgreSQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import Any

import httpx
import pytest
from http_server_support import CLIENT_TOKEN, WORKER_TOKEN, RunningServer

from fuseline import Status, Step, StepReport, Workflow
from fuseline.clients import HttpBrokerClient
from fuseline.errors import (
    IdempotencyConflictError,
    LeaseConflictError,
    WorkflowNotFoundError,
)
from fuseline.messages import StepAssignment


class Classify(Step):
    def run_step(self, text: str) -> str:
        return "long" if len(text) > 5 else "short"


class Shout(Step):
    def run_step(self, text: str) -> str:
        return text.upper()


class Whisper(Step):
    def run_step(self, text: str) -> str:
        return text.lower()


def branching_workflow(workflow_id: str = "http-branching", version: str = "1") -> Workflow:
    classify, shout, whisper = Classify(), Shout(), Whisper()
    (classify - "long") >> shout
    (classify - "short") >> whisper
    return Workflow(outputs=[shout, whisper], workflow_id=workflow_id, version=version)


def worker_client(server: RunningServer) -> HttpBrokerClient:
    return HttpBrokerClient(server.url, WORKER_TOKEN)


def app_client(server: RunningServer) -> HttpBrokerClient:
    return HttpBrokerClient(server.url, CLIENT_TOKEN)


def run_one(client: HttpBrokerClient, worker_id: str, workflow: Workflow, a: StepAssignment) -> Any:
    """Execute an assignment the way seed 001's hand-written worker does, and report it."""
    step = {s.name: s for s in workflow.steps}[a.step_name]
    shared: dict[Step | str, Any] = {}
    shared.update(a.results)
    result = workflow._execute_step(step, shared, a.workflow_inputs)
    return client.report_step(
        worker_id,
        StepReport(
            workflow_id=a.workflow_id,
            instance_id=a.instance_id,
            step_name=a.step_name,
            state=step.state,
            result=result,
            error=step.error,
            lease_token=a.lease_token,
        ),
    )


def drain(client: HttpBrokerClient, worker_id: str, workflow: Workflow) -> int:
    done = 0
    while (assignment := client.get_step(worker_id)) is not None:
        run_one(client, worker_id, workflow, assignment)
        done += 1
    return done


def test_a_worker_and_an_application_share_the_broker_over_http(server: RunningServer) -> None:
    workflow = branching_workflow()
    with worker_client(server) as worker, app_client(server) as app:
        worker_id = worker.register_worker([workflow.to_schema()], name="e2e-worker")
        long_run = app.dispatch(workflow, {"text": "a long sentence"})
        short_run = app.dispatch(workflow, {"text": "Hi"})
        assert drain(worker, worker_id, workflow) == 4  # two classify, one branch each

        long_done = app.wait_for_run(long_run, timeout=30)
        short_done = app.wait_for_run(short_run, timeout=30)
        assert long_done.status is Status.SUCCEEDED
        assert long_done.result == {"Shout": "A LONG SENTENCE", "Whisper": None}
        assert long_done.steps["Whisper"].status is Status.SKIPPED
        assert short_done.result == {"Shout": None, "Whisper": "hi"}
        assert short_done.inputs == {"text": "Hi"}

        listed = {run.run_id for run in app.list_runs(workflow_id="http-branching").items}
        assert listed == {long_run, short_run}
        assert [w.name for w in app.list_workers()] == ["e2e-worker"]
        assert [s.key for s in app.list_workflows()] == [("http-branching", "1")]


def test_the_process_engine_works_through_the_http_client(server: RunningServer) -> None:
    engine_module = pytest.importorskip("fuseline.worker")
    workflow = branching_workflow("http-engine")
    with worker_client(server) as worker, app_client(server) as app:
        run_id = app.dispatch_workflow(workflow.to_schema(), {"text": "engine over http"})
        engine = engine_module.ProcessEngine(worker, [workflow])
        engine.work()
        run = app.wait_for_run(run_id, timeout=30)
    assert run.status is Status.SUCCEEDED
    assert run.result == {"Shout": "ENGINE OVER HTTP", "Whisper": None}


def test_an_idle_worker_long_polls_until_a_run_is_dispatched(server: RunningServer) -> None:
    workflow = branching_workflow("http-long-poll")
    got: list[StepAssignment | None] = []
    with worker_client(server) as worker, app_client(server) as app:
        worker_id = worker.register_worker([workflow.to_schema()])
        polling = threading.Thread(
            target=lambda: got.append(worker.get_step(worker_id, wait=25)), daemon=True
        )
        polling.start()
        app.dispatch(workflow, {"text": "wake up"})
        polling.join(timeout=40)
    assert not polling.is_alive()
    assert got[0] is not None and got[0].step_name == "Classify"
    assert got[0].workflow_inputs == {"text": "wake up"}


def test_held_long_polls_do_not_hold_up_other_requests(server: RunningServer) -> None:
    workflow = branching_workflow("http-concurrent")
    with worker_client(server) as worker, app_client(server) as app:
        worker_id = worker.register_worker([workflow.to_schema()])
        pollers = [
            threading.Thread(target=worker.get_step, args=(worker_id,), kwargs={"wait": 20})
            for _ in range(6)
        ]
        for poller in pollers:
            poller.start()
        # While six polls wait for work, the server keeps answering everything else.
        for _ in range(5):
            assert [w.worker_id for w in app.list_workers()] == [worker_id]
        assert all(poller.is_alive() for poller in pollers)
        for n in range(6):
            app.dispatch(workflow, {"text": f"wake {n}"})
        for poller in pollers:
            poller.join(30)
        assert not any(poller.is_alive() for poller in pollers)


def test_leases_heartbeats_and_stale_reports(server: RunningServer) -> None:
    workflow = branching_workflow("http-leases")
    with worker_client(server) as worker, app_client(server) as app:
        worker_id = worker.register_worker([workflow.to_schema()])
        run_id = app.dispatch(workflow, {"text": "lengthy"})
        first = worker.get_step(worker_id, wait=5)
        assert first is not None and first.lease_token

        beat = worker.keep_alive(worker_id, [first.lease_token])
        assert [lease.lease_token for lease in beat.extended] == [first.lease_token]

        stale = StepReport(
            workflow_id=first.workflow_id,
            instance_id=first.instance_id,
            step_name=first.step_name,
            state=Status.SUCCEEDED,
            result="long",
            lease_token="not-the-lease-" + first.lease_token,
        )
        with pytest.raises(LeaseConflictError):
            worker.report_step(worker_id, stale)
        assert app.get_run(run_id).steps["Classify"].status is Status.RUNNING

        run_one(worker, worker_id, workflow, first)
        assert app.get_run(run_id).steps["Classify"].status is Status.SUCCEEDED
        # The lease is used up. Repeating the same report (a retry after a lost
        # response) is answered as before and changes nothing; a different
        # report under it is a conflict, not a second result.
        replay = stale.model_copy(update={"lease_token": first.lease_token})
        assert worker.report_step(worker_id, replay) is None
        other = replay.model_copy(update={"result": "short"})
        with pytest.raises(LeaseConflictError):
            worker.report_step(worker_id, other)
        done = app.get_run(run_id)
        assert done.steps["Classify"].result == "long"
        assert done.steps["Classify"].attempts == 1


def test_claim_next_hands_out_the_successor_in_the_same_call(server: RunningServer) -> None:
    workflow = branching_workflow("http-claim-next")
    with worker_client(server) as worker, app_client(server) as app:
        worker_id = worker.register_worker([workflow.to_schema()])
        run_id = app.dispatch(workflow, {"text": "lengthy text"})
        first = worker.get_step(worker_id, wait=5)
        assert first is not None
        following = worker.report_step(
            worker_id,
            StepReport(
                workflow_id=first.workflow_id,
                instance_id=first.instance_id,
                step_name=first.step_name,
                state=Status.SUCCEEDED,
                result="long",
                lease_token=first.lease_token,
            ),
            claim_next=True,
        )
        assert following is not None and following.step_name == "Shout"
        assert following.results == {"Classify": "long"}
        run_one(worker, worker_id, workflow, following)
        assert app.wait_for_run(run_id, timeout=30).result == {
            "Shout": "LENGTHY TEXT",
            "Whisper": None,
        }


def test_a_batch_of_reports_claims_the_successors_in_the_same_call(
    server: RunningServer,
) -> None:
    workflow = branching_workflow("http-batch")
    with worker_client(server) as worker, app_client(server) as app:
        worker_id = worker.register_worker([workflow.to_schema()])
        texts = {app.dispatch(workflow, {"text": t}): t for t in ("lengthy text", "Hi", "x")}
        firsts = worker.get_steps(worker_id, max_steps=3, wait=5)
        assert len(firsts) == 3
        labels = {
            a.instance_id: "long" if len(texts[a.instance_id]) > 5 else "short" for a in firsts
        }

        def classified(a: StepAssignment, token: str | None) -> StepReport:
            return StepReport(
                workflow_id=a.workflow_id,
                instance_id=a.instance_id,
                step_name=a.step_name,
                state=Status.SUCCEEDED,
                result=labels[a.instance_id],
                lease_token=token,
            )

        late = firsts[2]
        reply = worker.report_steps(
            worker_id,
            [
                classified(firsts[0], firsts[0].lease_token),
                classified(firsts[1], firsts[1].lease_token),
                classified(late, "stale-token"),
            ],
            claim=3,
        )

        assert [o.accepted for o in reply.outcomes] == [True, True, False]
        assert isinstance(reply.outcomes[2].error(), LeaseConflictError)
        assert sorted(a.step_name for a in reply.assignments) == ["Shout", "Whisper"]
        # The refused report changed nothing: its holder reports it properly now.
        run_one(worker, worker_id, workflow, late)
        for following in reply.assignments:
            run_one(worker, worker_id, workflow, following)
        assert drain(worker, worker_id, workflow) == 1
        results = {run_id: app.wait_for_run(run_id, timeout=30).result for run_id in texts}
    assert results == {
        run_id: {"Shout": "LENGTHY TEXT", "Whisper": None}
        if text == "lengthy text"
        else {"Shout": None, "Whisper": text.lower()}
        for run_id, text in texts.items()
    }


def test_dispatch_by_stored_id_and_version_with_idempotency_keys(server: RunningServer) -> None:
    first, second = branching_workflow("http-stored", "1"), branching_workflow("http-stored", "2")
    with worker_client(server) as worker, app_client(server) as app:
        worker.register_worker([first.to_schema(), second.to_schema()])
        latest = app.get_run(app.dispatch("http-stored", {"text": "x"}))
        assert latest.workflow_version == "2"
        pinned = app.get_run(app.dispatch("http-stored", {"text": "x"}, version="1"))
        assert pinned.workflow_version == "1"

        again = app.dispatch("http-stored", {"text": "once"}, idempotency_key="order-17")
        assert app.dispatch("http-stored", {"text": "once"}, idempotency_key="order-17") == again
        with pytest.raises(IdempotencyConflictError):
            app.dispatch("http-stored", {"text": "other"}, idempotency_key="order-17")
        with pytest.raises(WorkflowNotFoundError):
            app.dispatch("http-unknown")
        with pytest.raises(WorkflowNotFoundError):
            app.get_workflow("http-stored", "3")
        assert app.get_workflow("http-stored").version == "2"

    # The Idempotency-Key header works for any HTTP client, not just ours.
    headers = {"Authorization": f"Bearer {CLIENT_TOKEN}", "Idempotency-Key": "raw-1"}
    body = {"workflow_id": "http-stored", "inputs": {"text": "raw"}}
    answers = [httpx.post(f"{server.url}/v1/runs", json=body, headers=headers) for _ in range(2)]
    assert [a.status_code for a in answers] == [201, 201]
    assert answers[0].json() == answers[1].json()
    assert answers[0].headers["Location"] == f"/v1/runs/{answers[0].json()['run_id']}"


def test_runs_page_and_cancel(server: RunningServer) -> None:
    workflow = branching_workflow("http-pages")
    with worker_client(server) as worker, app_client(server) as app:
        worker.register_worker([workflow.to_schema()])
        run_ids = [app.dispatch(workflow, {"text": f"run {i}"}) for i in range(5)]
        seen: list[str] = []
        page = app.list_runs(workflow_id="http-pages", limit=2)
        while True:
            assert len(page.items) <= 2
            seen += [run.run_id for run in page.items]
            if page.next_cursor is None:
                break
            page = app.list_runs(workflow_id="http-pages", limit=2, cursor=page.next_cursor)
        assert seen == list(reversed(run_ids))  # newest first, each run once

        cancelled = app.cancel_run(run_ids[0])
        assert cancelled.cancel_requested
        finished = app.wait_for_run(run_ids[0], timeout=30)
        assert finished.status is Status.CANCELLED
        assert app.list_runs(status=Status.CANCELLED).items[0].run_id == run_ids[0]


def test_the_fuseline_command_against_a_real_server(server: RunningServer) -> None:
    workflow = branching_workflow("http-cli")
    env = {"FUSELINE_BROKER_URL": server.url, "FUSELINE_TOKEN": CLIENT_TOKEN}

    def fuseline(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fuseline.clients", *args],
            capture_output=True,
            text=True,
            env={**_plain_env(), **env},
            timeout=60,
        )

    with worker_client(server) as worker:
        worker_id = worker.register_worker([workflow.to_schema()])
        dispatched = fuseline("dispatch", "http-cli", "--input", '{"text": "from the cli"}')
        assert dispatched.returncode == 0, dispatched.stderr
        run_id = dispatched.stdout.strip()
        drain(worker, worker_id, workflow)

    waited = fuseline("runs", "wait", run_id, "--timeout", "30", "--json")
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["result"] == {"Shout": "FROM THE CLI", "Whisper": None}
    assert "http-cli" in fuseline("workflows").stdout
    missing = fuseline("runs", "show", "no-such-run")
    assert missing.returncode == 3 and "run_not_found" in missing.stderr
    denied = subprocess.run(
        [sys.executable, "-m", "fuseline.clients", "workers", "--broker", server.url],
        capture_output=True,
        text=True,
        env={**_plain_env(), "FUSELINE_TOKEN": "wrong-token-0123456789"},
        timeout=60,
    )
    assert denied.returncode == 5


def _plain_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FUSELINE_")}
