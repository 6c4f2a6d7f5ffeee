"""Fixtures of the fault suite: the report, the load balancer, the client host and the
lab's capacity, shared by every test module of the scenario."""

from __future__ import annotations

import base64

import pytest
from faultlib import LOADGEN, LOADGEN_SRC, Load, Report, address, brief, fleet_host, sh


@pytest.fixture(scope="session")
def report(request):
    suite = Report()
    yield suite
    suite.write(request.session.testsfailed)


@pytest.fixture(scope="session")
def lb():
    return address("lb1")


@pytest.fixture(scope="session")
def client():
    """The outsider host (a client of the service, exempt from its per-address limits as the
    scenario's host_vars say), with the load generator installed."""
    host = fleet_host("outsider")
    payload = base64.b64encode(LOADGEN_SRC.read_bytes()).decode()
    sh(host, f"echo {payload} | base64 -d > {LOADGEN} && chmod 0755 {LOADGEN}")
    return host


@pytest.fixture(scope="session")
def capacity(client, lb, report):
    """Images a second the lab serves, measured with 4 clients (2 per app worker)."""
    result = Load(client, "capacity", lb, duration=12, concurrency=4).result()
    assert result["failed"] == 0, brief(result)
    report.add(
        "Capacity (reference)",
        "Closed loop, 4 clients for 12 s: the rate the overload case multiplies by 4.",
        result,
        [f"capacity: {result['succeeded_per_s']:.1f} images/s"],
    )
    return result["succeeded_per_s"]
