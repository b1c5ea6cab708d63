"""Malformed and hostile requests: always a JSON 4xx, nothing stored changes, the broker lives on.

Fault case 8 of the reliability suite (docs/reliability.md). A table of raw
HTTP requests goes to a broker server holding a finished run, a run whose
step is leased, and two workers. The database's contents are compared,
table by table, before and after.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fault_flows as flows
import httpx
import pytest
from fault_checker import Figures, write_figures
from fault_harness import CLIENT_TOKEN, WORKER_TOKEN, FaultCluster

from fuseline import Status, StepReport
from fuseline.clients import HttpBrokerClient

MAX_BODY = 8 * 1024 * 1024  # the server's default --max-body-bytes
MAX_RESULT = 1024 * 1024  # the server's default --max-result-bytes


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    token: str | None
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    statuses: frozenset[int] = frozenset(range(400, 500))


def raw(value: Any) -> bytes:
    return json.dumps(value).encode()


def deep(levels: int) -> bytes:
    return (
        b'{"workflow_id": "fault-quick", "inputs": {"key": ' + b"[" * levels + b"]" * levels + b"}}"
    )


def database_digest(fc: FaultCluster, database_url: str | None) -> dict[str, str]:
    """A digest of every Fuseline table's rows, to compare before and after."""
    digests: dict[str, str] = {}
    if database_url is None:
        path = fc.cluster.folder / "fuseline-broker.sqlite3"
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = [
                row[0]
                for row in db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'fuseline%'"
                )
            ]
            for table in sorted(tables):
                rows = db.execute(f'SELECT * FROM "{table}"').fetchall()  # noqa: S608
                digests[table] = _digest(rows)
        return digests
    import psycopg

    with psycopg.connect(database_url) as db:
        tables = [
            row[0]
            for row in db.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'public' AND table_name LIKE 'fuseline%'"
            )
        ]
        for table in sorted(tables):
            rows = db.execute(f'SELECT * FROM "{table}"').fetchall()  # noqa: S608
            digests[table] = _digest(rows)
    return digests


def _digest(rows: list[Any]) -> str:
    text = "\n".join(sorted(repr(tuple(row)) for row in rows))
    return hashlib.sha256(text.encode()).hexdigest()[:16] + f" ({len(rows)} rows)"


@pytest.fixture
def prepared(chaos_cluster: FaultCluster) -> Iterator[dict[str, Any]]:
    """Two workers, a finished run (with its accepted report) and a run with a live lease."""
    fc = chaos_cluster
    worker = HttpBrokerClient(fc.cluster.server.url, WORKER_TOKEN)
    try:
        schemas = [flows.long.to_schema(), flows.quick.to_schema()]
        holder = worker.register_worker(schemas, name="holder")
        stranger = worker.register_worker(schemas, name="stranger")
        (done_key,) = fc.dispatch(flows.quick, 1)
        finished = worker.get_step(holder, wait=10)
        assert finished is not None
        report = StepReport(
            workflow_id=finished.workflow_id,
            instance_id=finished.instance_id,
            step_name=finished.step_name,
            state=Status.SUCCEEDED,
            result={"exec": "by-hand", "value": "done", "pid": 0},
            lease_token=finished.lease_token,
        )
        worker.report_step(holder, report)
        (held_key,) = fc.dispatch(flows.long, 1, lambda i: {"seconds": 1})
        held = worker.get_step(holder, wait=10)  # a 20-second lease, never reported
        assert held is not None and held.step_name == "long"
        yield {
            "holder": holder,
            "stranger": stranger,
            "done_run": fc.runs[done_key],
            "done_dispatch_key": f"fault-{done_key}",
            "done_report": report,
            "held_run": fc.runs[held_key],
            "held": held,
        }
    finally:
        worker.close()


def cases(state: dict[str, Any]) -> list[Case]:
    holder, stranger = state["holder"], state["stranger"]
    held = state["held"]
    done_run, held_run = state["done_run"], state["held_run"]
    done_report: StepReport = state["done_report"]
    reports = f"/v1/workers/{holder}/reports"

    def report_body(**changes: Any) -> bytes:
        base = {
            "workflow_id": held.workflow_id,
            "instance_id": held.instance_id,
            "step_name": held.step_name,
            "state": "SUCCEEDED",
            "result": {"value": 1},
            "lease_token": held.lease_token,
        }
        return raw({"report": {**base, **changes}})

    dispatch = "/v1/runs"
    C, W = CLIENT_TOKEN, WORKER_TOKEN
    return [
        # -- not JSON, or JSON that Python would accept but JSON does not
        Case("invalid JSON", "POST", dispatch, C, b'{"workflow_id": '),
        Case("not an object", "POST", dispatch, C, b"[1, 2, 3]"),
        Case("empty body", "POST", dispatch, C, b""),
        Case("NaN", "POST", dispatch, C, b'{"workflow_id": "fault-quick", "inputs": {"key": NaN}}'),
        Case(
            "Infinity",
            "POST",
            dispatch,
            C,
            b'{"workflow_id": "fault-quick", "inputs": {"key": Infinity}}',
        ),
        Case(
            "overflowing float",
            "POST",
            dispatch,
            C,
            b'{"workflow_id": "fault-quick", "inputs": {"key": 1e999}}',
        ),
        Case(
            "huge integer",
            "POST",
            dispatch,
            C,
            b'{"workflow_id": "fault-quick", "inputs": {"key": ' + b"9" * 5000 + b"}}",
        ),
        Case("deep nesting", "POST", dispatch, C, deep(100_000)),
        Case("invalid UTF-8", "POST", dispatch, C, b'{"workflow_id": "fault-\xff\xfe"}'),
        Case(
            "NUL in an input",
            "POST",
            dispatch,
            C,
            raw({"workflow_id": "fault-quick", "inputs": {"key": "a\u0000b"}}),
        ),
        Case("NUL in a workflow id", "POST", dispatch, C, raw({"workflow_id": "fault\u0000quick"})),
        Case("NUL in a path", "GET", "/v1/runs/abc%00def", C),
        Case(
            "lone surrogate",
            "POST",
            dispatch,
            C,
            b'{"workflow_id": "fault-quick", "inputs": {"key": "\\ud800"}}',
        ),
        # -- the wrong shapes and types
        Case("wrong type", "POST", dispatch, C, raw({"workflow_id": 5})),
        Case(
            "unknown field", "POST", dispatch, C, raw({"workflow_id": "fault-quick", "surprise": 1})
        ),
        Case(
            "inputs not an object",
            "POST",
            dispatch,
            C,
            raw({"workflow_id": "fault-quick", "inputs": [1]}),
        ),
        Case(
            "claim count not a number",
            "POST",
            f"/v1/workers/{holder}/claims",
            W,
            raw({"max_steps": "many"}),
        ),
        Case(
            "claim count too big",
            "POST",
            f"/v1/workers/{holder}/claims",
            W,
            raw({"max_steps": 10**9}),
        ),
        Case("negative wait", "POST", f"/v1/workers/{holder}/claims", W, raw({"wait": -1})),
        Case("report in a non-final state", "POST", reports, W, report_body(state="RUNNING")),
        Case("report with a bad state", "POST", reports, W, report_body(state="DONE")),
        Case(
            "heartbeat tokens not a list",
            "POST",
            f"/v1/workers/{holder}/heartbeat",
            W,
            raw({"lease_tokens": "all"}),
        ),
        Case(
            "schema with a cycle",
            "POST",
            "/v1/workers",
            W,
            raw(
                {
                    "workflows": [
                        {
                            "workflow_id": "loop",
                            "steps": [{"name": "a"}, {"name": "b"}],
                            "edges": [
                                {"source": "a", "target": "b"},
                                {"source": "b", "target": "a"},
                            ],
                            "outputs": ["b"],
                        }
                    ]
                }
            ),
        ),
        Case(
            "schema edge to nowhere",
            "POST",
            "/v1/workers",
            W,
            raw(
                {
                    "workflows": [
                        {
                            "workflow_id": "lost",
                            "steps": [{"name": "a"}],
                            "edges": [{"source": "a", "target": "z"}],
                            "outputs": ["a"],
                        }
                    ]
                }
            ),
        ),
        Case("bad query value", "GET", "/v1/runs?limit=abc", C),
        Case("query out of range", "GET", "/v1/runs?limit=0", C),
        Case("unknown query parameter", "GET", "/v1/runs?bogus=1", C),
        Case("negative wait for a run", "GET", f"/v1/runs/{done_run}/wait?timeout=-1", C),
        Case("bad cursor", "GET", "/v1/runs?cursor=not-a-cursor", C),
        Case("wrong method", "DELETE", dispatch, C),
        Case("unknown route", "GET", "/v2/runs", C),
        # -- too big
        Case(
            "oversized body",
            "POST",
            dispatch,
            C,
            b'{"workflow_id": "fault-quick", "inputs": {"key": "' + b"x" * (MAX_BODY + 1) + b'"}}',
            statuses=frozenset({413}),
        ),
        Case(
            "oversized result",
            "POST",
            reports,
            W,
            report_body(result="x" * (MAX_RESULT + 1)),
            statuses=frozenset({413}),
        ),
        Case(
            "oversized inputs",
            "POST",
            dispatch,
            C,
            raw({"workflow_id": "fault-quick", "inputs": {"key": "x" * (MAX_RESULT + 1)}}),
            statuses=frozenset({413}),
        ),
        # -- ids that do not exist, or belong to someone else
        Case("unknown run", "GET", "/v1/runs/no-such-run", C, statuses=frozenset({404})),
        Case(
            "cancel an unknown run",
            "POST",
            "/v1/runs/no-such-run/cancel",
            C,
            statuses=frozenset({404}),
        ),
        Case(
            "cancel a finished run",
            "POST",
            f"/v1/runs/{done_run}/cancel",
            C,
            statuses=frozenset({409}),
        ),
        Case(
            "unknown worker",
            "POST",
            "/v1/workers/no-such-worker/claims",
            W,
            raw({}),
            statuses=frozenset({404}),
        ),
        Case(
            "unknown workflow",
            "POST",
            dispatch,
            C,
            raw({"workflow_id": "no-such-flow"}),
            statuses=frozenset({404}),
        ),
        Case(
            "unknown workflow version",
            "GET",
            "/v1/workflows/fault-quick/versions/99",
            C,
            statuses=frozenset({404}),
        ),
        Case(
            "report on another worker's lease",
            "POST",
            f"/v1/workers/{stranger}/reports",
            W,
            report_body(),
            statuses=frozenset({404, 409}),
        ),
        Case(
            "report with a made-up lease token",
            "POST",
            reports,
            W,
            report_body(lease_token="forged-" + "0" * 32),
            statuses=frozenset({409}),
        ),
        Case(
            "report without a lease token",
            "POST",
            reports,
            W,
            report_body(lease_token=None),
            statuses=frozenset({409, 422}),
        ),
        Case(
            "report for another run",
            "POST",
            reports,
            W,
            report_body(instance_id=done_run),
            statuses=frozenset({404, 409, 422}),
        ),
        Case(
            "report for an unknown step",
            "POST",
            reports,
            W,
            report_body(step_name="nope"),
            statuses=frozenset({404, 409}),
        ),
        # -- replays
        Case(
            "replayed report with another result",
            "POST",
            reports,
            W,
            raw(
                {
                    "report": {
                        **json.loads(done_report.model_dump_json()),
                        "result": {"exec": "forged"},
                    }
                }
            ),
            statuses=frozenset({409}),
        ),
        Case(
            "replayed dispatch key with other inputs",
            "POST",
            dispatch,
            C,
            raw({"workflow_id": "fault-quick", "inputs": {"key": "other"}}),
            headers=(("Idempotency-Key", state["done_dispatch_key"]),),
            statuses=frozenset({409}),
        ),
        # -- tokens
        Case("no token", "GET", f"/v1/runs/{done_run}", None, statuses=frozenset({401})),
        Case(
            "garbage token", "GET", f"/v1/runs/{done_run}", "not-a-token", statuses=frozenset({401})
        ),
        Case(
            "worker token dispatching",
            "POST",
            dispatch,
            W,
            raw({"workflow_id": "fault-quick"}),
            statuses=frozenset({403}),
        ),
        Case(
            "worker token reading runs", "GET", f"/v1/runs/{held_run}", W, statuses=frozenset({403})
        ),
        Case(
            "client token claiming",
            "POST",
            f"/v1/workers/{holder}/claims",
            C,
            raw({}),
            statuses=frozenset({403}),
        ),
        Case(
            "client token reporting", "POST", reports, C, report_body(), statuses=frozenset({403})
        ),
        Case(
            "client token registering",
            "POST",
            "/v1/workers",
            C,
            raw({"workflows": []}),
            statuses=frozenset({403}),
        ),
    ]


def send(client: httpx.Client, case: Case) -> httpx.Response:
    headers = dict(case.headers)
    if case.token is not None:
        headers["Authorization"] = f"Bearer {case.token}"
    if case.body is not None:
        headers["Content-Type"] = "application/json"
    return client.request(case.method, case.path, content=case.body, headers=headers)


def test_fault_8_hostile_input_gets_a_json_4xx_and_changes_nothing(
    chaos_cluster: FaultCluster, prepared: dict[str, Any], backend: tuple[str, str | None]
) -> None:
    fc = chaos_cluster
    before = database_digest(fc, backend[1])
    table = cases(prepared)
    wrong: list[str] = []
    answers: dict[str, int] = {}
    with httpx.Client(base_url=fc.cluster.server.url, timeout=30) as client:
        for case in table:
            response = send(client, case)
            answers[case.name] = response.status_code
            try:
                error = response.json()["error"]
                well_formed = isinstance(error["code"], str) and isinstance(error["message"], str)
            except (ValueError, KeyError, TypeError):
                well_formed = False
            if response.status_code not in case.statuses or not well_formed:
                wrong.append(f"{case.name}: {response.status_code} {response.text[:300]!r}")
            if not response.headers.get("content-type", "").startswith("application/json"):
                wrong.append(f"{case.name}: answered with {response.headers.get('content-type')}")

        # The same report sent again (a retry after a lost answer) is not an
        # error: it gets the answer the first one got, and changes nothing.
        done: StepReport = prepared["done_report"]
        replay = client.post(
            f"/v1/workers/{prepared['holder']}/reports",
            content=json.dumps({"report": json.loads(done.model_dump_json())}),
            headers={"Authorization": f"Bearer {WORKER_TOKEN}", "Content-Type": "application/json"},
        )
        answers["replayed report"] = replay.status_code
        health = client.get("/health").status_code

    after = database_digest(fc, backend[1])
    changed = sorted(name for name in before if before[name] != after.get(name))
    run = fc.client.get_run(prepared["held_run"])
    figures = Figures(
        test="hostile-input",
        backend=fc.backend,
        seconds=round(fc.seconds(), 2),
        problems=wrong + [f"table {name} changed" for name in changed],
        extra={"requests": len(table) + 1, "answers": answers},
    )
    write_figures(figures)
    assert not wrong, "\n".join(wrong)
    assert not changed, (changed, before, after)
    assert replay.status_code in (200, 409), replay.text
    assert health == 200
    assert run.steps["long"].status is Status.RUNNING, "the held lease did not survive"
    assert "failed unexpectedly" not in fc.cluster.server.log()
    # The digest does see a change when there is one.
    fc.dispatch(flows.quick, 1)
    assert database_digest(fc, backend[1]) != after
