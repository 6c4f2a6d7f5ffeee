"""Fixtures of the fault suite (the report, the load balancer, the client host and the lab's
capacity, shared by every test module of the scenario) and the order its modules run in."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from fleetlib import address, fleet_host, sh
from loadlib import LOADGEN, LOADGEN_SRC, Load, Report, brief

HERE = Path(__file__).resolve().parent
# The order the test modules run in, whatever order they are collected in (Molecule passes
# them sorted by name). All but test_cluster.py and test_check_mode.py add their cases to
# the report. Every test_*.py here must be listed: collection fails otherwise.
TEST_MODULES = [
    # On the fleet as converged: hostile traffic from the attacker host (the port prober that
    # prepare.yml started is read and stopped here), then the basic service.
    "test_attacks.py",
    "test_cluster.py",
    # site.yml --check --diff on the fleet as converged: nothing to report; then hosts never
    # deployed, put in the app and lb groups for the check alone.
    "test_check_mode.py",
    # Prometheus on monitor1: every target up, a known burst counted, the dashboard's queries.
    "test_monitoring.py",
    # What nobody may reach, and what nginx shows: read-only, or restored by each case.
    "test_lockdown.py",
    "test_edge.py",
    "test_openapi.py",
    # Faults under load, each restored before the next: workers, bad input, whole hosts.
    "test_worker_faults.py",
    "test_fuzz.py",
    "test_host_faults.py",
    # Several models: B's faults, redeploy and removal under load on A; B put back after.
    "test_models.py",
    # The rolling deploy leaves the fleet on a new app version and new weights.
    "test_deploys.py",
    # Last: GPU maintenance reboots each app host; they keep the fake GPU facts it leaves.
    "test_gpu_reboots.py",
]


def _module(item):
    """The test module `item` belongs to, relative to this directory (None: elsewhere)."""
    path = Path(item.path).resolve()
    return path.relative_to(HERE).as_posix() if path.is_relative_to(HERE) else None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    """Run this directory's tests module by module in TEST_MODULES' order, each module's in
    file order; tests from elsewhere keep their places. Last, after pytest's own reordering
    by fixture parameters, so that nothing moves a test across modules after this."""
    on_disk = {p.relative_to(HERE).as_posix() for p in HERE.rglob("test_*.py")}
    collected = {_module(item) for item in items} - {None}
    unlisted = sorted((on_disk | collected) - set(TEST_MODULES))
    missing = sorted(set(TEST_MODULES) - on_disk)
    if unlisted or missing or len(set(TEST_MODULES)) != len(TEST_MODULES):
        raise pytest.UsageError(
            f"{HERE / 'conftest.py'}: TEST_MODULES must list each test module here once;"
            f" not listed: {unlisted}, listed but absent: {missing}, listed: {TEST_MODULES}"
        )
    slots = [i for i, item in enumerate(items) if _module(item)]
    ours = sorted((items[i] for i in slots), key=lambda item: TEST_MODULES.index(_module(item)))
    for slot, item in zip(slots, ours, strict=True):
        items[slot] = item


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
