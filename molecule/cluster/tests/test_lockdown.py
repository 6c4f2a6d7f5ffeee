"""The locked-down fleet: what runs the service, what it may do, who reaches its port, and
what it refuses to start with. Each case adds its facts to tests/results/faults.md."""

from __future__ import annotations

import re
import time

from fleetlib import APP_HOSTS, CONNECT_PROBE, address, fleet_host, sh, wait_ready
from fleetvars import DROPIN_DIR, HEALTH_PORT, SERVICE_USER, UNIT, UWSGI_PORT

testinfra_hosts = ["outsider"]


def test_service_runs_as_unprivileged_user_without_login_shell(client, report):
    facts = []
    for name in APP_HOSTS:
        app = fleet_host(name)
        users = set(sh(app, "ps -o user= -C uwsgi").split())
        assert users == {SERVICE_USER}, (name, users)
        passwd = app.user(SERVICE_USER)
        assert passwd.shell in ("/usr/sbin/nologin", "/bin/false"), passwd.shell
        assert passwd.uid != 0
        shadow = sh(app, f"getent shadow {SERVICE_USER}").split(":")[1]
        assert shadow.startswith(("!", "*")), "the service user must have no password"
        facts.append(
            f"{name}: every uwsgi process runs as `{SERVICE_USER}` (uid {passwd.uid}), shell"
            f" `{passwd.shell}`, password field `{shadow}`"
        )
    report.add(
        "Service user", "The service runs as a non-root user with no login shell.", None, facts
    )


# Documented in roles/uwsgi_app/README.md: the unit's exposure on a CPU host stays at or below.
EXPOSURE_TARGET = 1.5


def test_systemd_exposure_within_target(client, report):
    facts = []
    for name in APP_HOSTS:
        out = sh(fleet_host(name), f"systemd-analyze security {UNIT}.service --no-pager")
        match = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", out)
        assert match, out[-500:]
        level = float(match.group(1))
        facts.append(f"{name}: `systemd-analyze security` exposure {level} {match.group(2)}")
        assert level <= EXPOSURE_TARGET, (name, level)
    report.add(
        "systemd sandbox",
        f"`systemd-analyze security` on the unit: exposure at or below {EXPOSURE_TARGET}.",
        None,
        facts,
    )


def test_uwsgi_port_refuses_every_host_outside_lb(client, report):
    probe = CONNECT_PROBE
    facts = []
    for source, name in (("outsider", client), ("app2", fleet_host("app2"))):
        for target in APP_HOSTS:
            if source == target:
                continue
            result = name.run(f"{probe} {address(target)} {UWSGI_PORT}")
            assert result.rc != 0 and "ConnectionRefusedError" in result.stderr, (source, target)
            facts.append(f"{source} -> {target}:{UWSGI_PORT} refused (TCP reset from nftables)")
    lb1 = fleet_host("lb1")
    for target in APP_HOSTS:
        assert lb1.run(f"{probe} {address(target)} {UWSGI_PORT}").rc == 0
    facts.append(f"lb1 -> app1:{UWSGI_PORT} and app2:{UWSGI_PORT} accepted")
    report.add("uwsgi port", "Only `lb` hosts reach the uwsgi port of an app host.", None, facts)


def test_wrong_weights_sha256_stops_the_service(client, report):
    app = fleet_host("app2")
    env_file = f"/run/{UNIT}-fault-sha256.env"
    since = time.time()
    sh(
        app,
        f"mkdir -p {DROPIN_DIR} && echo SEGSERVE_WEIGHTS_SHA256={'0' * 64} > {env_file}"
        f" && printf '[Service]\\nEnvironmentFile={env_file}\\n'"
        f" > {DROPIN_DIR}/50-fault-sha256.conf"
        " && systemctl daemon-reload",
    )
    try:
        app.run(f"timeout 120 systemctl restart {UNIT}")
        refusal = ""
        for _ in range(60):
            journal = sh(app, f"journalctl -u {UNIT} --since @{int(since)} --no-pager -o cat")
            refusal = next((ln for ln in journal.splitlines() if "refusing to start" in ln), "")
            if refusal:
                break
            time.sleep(1)
        assert "refusing to start" in refusal and "sha256" in refusal, journal[-2000:]
        ready = app.run(f"curl -sf http://127.0.0.1:{HEALTH_PORT}/readyz")
        assert ready.rc != 0, "the service answered ready with the wrong weights digest"
        state = sh(app, f"systemctl show -p ActiveState -p SubState -p NRestarts {UNIT}")
    finally:
        sh(
            app,
            f"rm -f {DROPIN_DIR}/50-fault-sha256.conf {env_file} && systemctl daemon-reload"
            f" && systemctl reset-failed {UNIT}; systemctl restart {UNIT}",
        )
    wait_ready(app)
    report.add(
        "Wrong weights digest",
        "Weights with another sha256 than the converted model was made from stop the service"
        " from starting, with a clear log line.",
        None,
        [
            f"app2 with SEGSERVE_WEIGHTS_SHA256=000...0: `{refusal.strip()[:240]}`",
            "unit state while refused: " + " ".join(state.split()),
            "readyz never answered; restored and ready again afterwards",
        ],
    )
