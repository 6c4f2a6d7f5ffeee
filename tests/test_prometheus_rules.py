"""The monitoring tier's rules and targets, without a fleet: the alert and recording rules pass
their promtool unit tests (Debian's promtool, the one the role installs), every alert has a case
that fires it, and the scrape targets follow each app host's and model's ports. The lab's
Prometheus runs the same rules and dashboard against real traffic in the cluster scenario
(molecule/cluster/tests/test_monitoring.py)."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "roles" / "prometheus" / "files" / "rules"
DASHBOARD = ROOT / "roles" / "prometheus" / "files" / "dashboards" / "segserve.json"
CACHE = Path.home() / ".cache" / "segserve" / "promtool"

sys.path.insert(0, str(ROOT / "plugins" / "filter"))
from segserve_models import (  # noqa: E402
    segserve_exporter_targets,
    segserve_metrics_targets,
    segserve_models_resolve,
)


@pytest.fixture(scope="module")
def promtool():
    """promtool from PATH, else from Debian's prometheus package, unpacked (not installed:
    installing would start a Prometheus on this machine) into the cache once."""
    found = shutil.which("promtool")
    if found:
        return found
    binary = CACHE / "usr" / "bin" / "promtool"
    if not binary.exists():
        download = CACHE.parent / "promtool-deb"
        download.mkdir(parents=True, exist_ok=True)
        fetched = subprocess.run(
            ["apt-get", "download", "prometheus"], cwd=download, capture_output=True, text=True
        )
        debs = sorted(download.glob("prometheus_*.deb"))
        if fetched.returncode != 0 or not debs:
            pytest.fail(
                "promtool is needed: install Debian's prometheus package, or let "
                f"`apt-get download prometheus` reach Debian's mirror:\n{fetched.stderr}"
            )
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(CACHE)], check=True)
    return str(binary)


def run_promtool(promtool, *args):
    """promtool on the role's rules directory; fails the test with its output."""
    result = subprocess.run([promtool, *args], cwd=RULES, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_are_valid(promtool):
    run_promtool(promtool, "check", "rules", "segserve.rules.yml")


def test_rules_pass_their_unit_tests(promtool):
    run_promtool(promtool, "test", "rules", "segserve.rules.test.yml")


def test_every_alert_has_a_case_that_fires_it():
    rules = yaml.safe_load((RULES / "segserve.rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((RULES / "segserve.rules.test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts and alerts - fired == set()


def test_dashboard_queries_name_only_what_the_fleet_exports():
    """Every dashboard query reads a recorded rule or a metric some target exports (the lab
    checks each returns data); a typo in a metric name would show an empty panel."""
    rules = yaml.safe_load((RULES / "segserve.rules.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    known_prefixes = ("segserve_", "nginx_", "node_", "up")
    for expr in exprs:
        names = {
            word
            for word in _identifiers(expr)
            if word in recorded or word.startswith(known_prefixes)
        }
        assert names, expr


def _identifiers(expr):
    return set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))


HOSTVARS = {
    "app1": {"ansible_facts": {"default_ipv4": {"address": "10.0.1.1"}}},
    "app2": {
        "ansible_facts": {"default_ipv4": {"address": "10.0.1.2"}},
        "uwsgi_app_port": 9001,
    },
    "app3": {"uwsgi_app_listen_address": "fd00::3", "uwsgi_app_metrics_port": 0},
    "lb1": {
        "ansible_facts": {"default_ipv4": {"address": "10.0.0.1"}},
        "exporters_node_port": 9200,
    },
}
GROUPS = {"app": ["app1", "app2", "app3"]}


def test_metrics_targets_follow_each_instances_ports():
    models = segserve_models_resolve(
        [{"name": "fast"}, {"name": "accurate", "port": 8011, "hosts": ["app1", "app3"]}],
        GROUPS,
        "app",
    )
    targets = [
        (c["labels"]["host"], c["targets"][0])
        for c in segserve_metrics_targets(models, HOSTVARS, 8001)
    ]
    assert targets == [
        # The default model: the host's uwsgi port + 2; app3 turned its metrics port off.
        ("app1", "10.0.1.1:8003"),
        ("app2", "10.0.1.2:9003"),
        # Another model: its own port's block, on each host that serves it; IPv6 in brackets.
        ("app1", "10.0.1.1:8013"),
        ("app3", "[fd00::3]:8013"),
    ]


def test_exporter_targets_read_the_hosts_port():
    targets = segserve_exporter_targets(["app1", "lb1"], HOSTVARS, "exporters_node_port", 9100)
    assert [c["targets"][0] for c in targets] == ["10.0.1.1:9100", "10.0.0.1:9200"]
