"""Shared by every scenario's testinfra suite: on a failed test, show the host's side."""

import pytest

UNITS = ("segserve", "nginx", "nftables")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" and report.failed and "host" in item.funcargs:
        host = item.funcargs["host"]
        units = " ".join(f"-u {unit}" for unit in UNITS)
        journal = host.run(f"journalctl --no-pager -n 60 {units}").stdout
        failed = host.run("systemctl --failed --no-legend").stdout
        report.sections.append(("journal", journal))
        report.sections.append(("failed units", failed or "(none)"))
    return report
