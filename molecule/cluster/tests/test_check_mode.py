"""`ansible-playbook site.yml --check --diff`, as an operator runs it before a change: on the
fleet as converged it reports no change and no error, and on hosts never deployed it stops at
once with why, rather than guessing a change or failing on what an install would have made."""

from __future__ import annotations

import re

from fleetlib import APP_HOSTS, INVENTORY, fleet_host, master_pid, run_playbook
from fleetvars import PROJECT, RESTART_MARKER

testinfra_hosts = ["outsider"]

RECAP = re.compile(
    r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE
)


def check(*args, inventories=(INVENTORY,)):
    """Run a playbook in check mode with diffs; its plain output and {host: (changed, failed)}."""
    sources = [part for inventory in inventories for part in ("-i", str(inventory))]
    run = run_playbook(*sources, *args, "--check", "--diff", check=False)
    out = run.stdout + run.stderr
    recap = {m[0]: (int(m[2]), int(m[4]) + int(m[3])) for m in RECAP.findall(out)}
    return run.returncode, out, recap


def test_check_on_the_converged_fleet_reports_nothing():
    masters = {name: master_pid(fleet_host(name)) for name in APP_HOSTS}
    rc, out, recap = check(str(PROJECT / "site.yml"))
    changed = re.findall(r"TASK \[([^\]]+)\][^\n]*\n(?:[^\n]*\n)*?changed: \[(\w+)", out)
    assert rc == 0, out[-4000:]
    assert set(recap) >= {"lb1", *APP_HOSTS}, recap
    assert all(counts == (0, 0) for counts in recap.values()), (recap, changed)
    assert "--- before" not in out, "a check on the converged fleet showed a diff"
    for name in APP_HOSTS:
        app = fleet_host(name)
        assert master_pid(app) == masters[name], f"the check restarted the service on {name}"
        assert not app.file(RESTART_MARKER).exists, f"the check left a restart owed on {name}"


def test_check_of_hosts_never_deployed_stops_with_why(tmp_path):
    """The outsider host, never provisioned, put in the app group by a second inventory
    source, and the attacker host in the lb group: each tier's check stops before it reports
    any change. The lb check includes the app hosts, whose facts name the upstream."""
    app_extra, lb_extra = tmp_path / "new_app.ini", tmp_path / "new_lb.ini"
    app_extra.write_text("[app]\noutsider\n")
    lb_extra.write_text("[lb]\nattacker\n")
    outsider, attacker = fleet_host("outsider"), fleet_host("attacker")

    rc, out, recap = check(
        str(PROJECT / "playbooks" / "app.yml"),
        "--limit",
        "outsider",
        inventories=(INVENTORY, app_extra),
    )
    assert rc != 0 and recap.get("outsider") == (0, 1), (recap, out[-3000:])
    assert (
        "Check mode cannot predict this deploy of segserve on outsider: its virtualenv"
        " (/opt/segserve/venv) was never filled here" in re.sub(r"\s+", " ", out)
    ), out[-3000:]
    assert not outsider.file("/opt/segserve").exists

    rc, out, recap = check(
        str(PROJECT / "playbooks" / "lb.yml"),
        "--limit",
        f"attacker,{','.join(APP_HOSTS)}",
        inventories=(INVENTORY, lb_extra),
    )
    assert rc != 0 and recap.get("attacker") == (0, 1), (recap, out[-3000:])
    assert all(recap.get(name, (0, 0))[0] == 0 for name in APP_HOSTS), recap
    assert (
        "Check mode cannot predict the first configuration of nginx on attacker: nginx is not"
        " installed there yet" in re.sub(r"\s+", " ", out)
    ), out[-3000:]
    assert not attacker.exists("nginx")
