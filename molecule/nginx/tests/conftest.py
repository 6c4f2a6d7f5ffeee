"""Fixtures of the nginx scenario; on a failed test, also show nginx's own logs (the shared
molecule/conftest.py adds the journal)."""

import time

import pytest
from nginx_helpers import ACCESS_LOG, FAIL_TIMEOUT_S, set_stub


@pytest.fixture
def stopped_backends(request):
    """Stop the stub app on the hosts given by indirect parametrisation; restart it after."""
    names = request.param
    set_stub(names, "stop")
    yield names
    set_stub(names, "start")
    time.sleep(FAIL_TIMEOUT_S)


@pytest.fixture
def failures_recover():
    """For tests that make app hosts fail: let nginx put them back in rotation afterwards."""
    yield
    time.sleep(FAIL_TIMEOUT_S)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" and report.failed and "host" in item.funcargs:
        host = item.funcargs["host"]
        report.sections.append(
            ("nginx error log", host.run("tail -n 40 /var/log/nginx/error.log").stdout)
        )
        report.sections.append(("nginx access log", host.run(f"tail -n 10 {ACCESS_LOG}").stdout))
    return report
