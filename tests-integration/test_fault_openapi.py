"""Schemathesis fuzzes the API from its OpenAPI document while real runs go on.

Fault case 10 of the reliability suite (docs/reliability.md). The broker's
own suite runs schemathesis briefly on every test run
(``packages/fuseline-broker/tests/test_http_openapi.py``, which explains what
is set aside and why); here it runs longer, with its stateful phase, while
workers execute fan-out/fan-in runs on the same broker, and the checker then
confirms that those runs were not disturbed.
"""

from __future__ import annotations

from pathlib import Path

import fault_flows as flows
import pytest
from fault_checker import assert_sound, check, expect_fan
from fault_harness import CLIENT_TOKEN, FaultCluster, start_server
from schemathesis_support import ROBYN_MULTIPART_PROBE, every_request_answered, run_schemathesis
from worker_processes import Cluster

from fuseline.clients import HttpBrokerClient

BOTH_ROLES = "fault-both-roles-" + "0123456789abcdef"
OPTIONS = (
    "--checks",
    "not_a_server_error",
    "--max-examples",
    "15",
    "--seed",
    "10",
    # Short: the one request that can hang is the one after Robyn's
    # multipart failure (see the broker's test_http_openapi.py).
    "--request-timeout",
    "3",
)


@pytest.mark.chaos
@pytest.mark.postgres
def test_fault_10_schemathesis_finds_no_server_error(
    postgres_url: str, tmp_path: Path, workers_find_fault_flows: None
) -> None:
    pytest.importorskip("schemathesis", reason="schemathesis is not installed")
    name, database_url = "postgres", postgres_url
    server = start_server(
        tmp_path,
        "--log-level",
        "DEBUG",
        "--max-wait",
        "0.5",
        database_url=database_url,
        env={"FUSELINE_TOKEN": BOTH_ROLES},
    )
    cluster = Cluster(server, tmp_path, HttpBrokerClient(server.url, CLIENT_TOKEN), database_url)
    fc = FaultCluster(cluster, name)
    try:
        fc.start_workers(2, "--concurrency", "2")
        fc.dispatch(flows.fan, 30, lambda i: {"size": 2 + i % 5})
        result = run_schemathesis(server.url, tmp_path, BOTH_ROLES, *OPTIONS, timeout=280)
        details = fc.wait_all(timeout=120)
        figures = check(
            fc,
            details,
            "schemathesis",
            expect=expect_fan,
            extra={
                "operations": result["operations"],
                "failures": [f["code"] for f in result["failures"]],
                "errors": [e.get("title") for e in result["errors"]],
            },
        )
    finally:
        problems = cluster.close()
        code = server.stop()
    log = server.log()
    server_errors = [f for f in result["failures"] if f["code"] != ROBYN_MULTIPART_PROBE]
    assert_sound(figures)
    assert not problems and code == 0, problems
    assert result["operations"]["tested"] == result["operations"]["total"]
    assert server_errors == [], result["output"]
    if any(f["code"] == ROBYN_MULTIPART_PROBE for f in result["failures"]):
        assert "Multipart boundary" in log
    # Network errors happen only after Robyn's multipart failure, and only if
    # every request that reached the broker still got its answer.
    assert every_request_answered(log), "a request that reached the broker got no answer"
    assert [e for e in result["errors"] if e.get("title") != "Network Error"] == []
    assert "failed unexpectedly" not in log and "Traceback" not in log
