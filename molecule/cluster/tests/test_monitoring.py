"""The monitoring tier in the lab: monitor1's Prometheus (roles/prometheus) scrapes every app
host's instance of every model, nginx's exporter and mtail on lb1 and every host's node
exporter, all up; a known burst of requests through nginx reaches its counters exactly; every
query of the Grafana dashboard returns data; the exporters answer monitor1 and nobody else."""

import json
import shlex
import time

import pytest
from fleetlib import APP_HOSTS, PHOTOS, address, fleet_host, sh
from fleetvars import MODELS, PROJECT

testinfra_hosts = ["outsider"]

DASHBOARD = PROJECT / "roles" / "prometheus" / "files" / "dashboards" / "segserve.json"
RULES_GROUPS = {"segserve.recording", "segserve.alerts"}
# The exporters' ports (roles/segserve's defaults, which the lab keeps).
NODE_PORT, NGINX_EXPORTER_PORT, MTAIL_PORT = 9100, 9113, 3903
PROMETHEUS_PORT = 9090
BURST = 30


def api(path, **params):
    """One answer of monitor1's Prometheus HTTP API, asked from monitor1 itself."""
    monitor = fleet_host("monitor1")
    args = " ".join(f"--data-urlencode {shlex.quote(f'{k}={v}')}" for k, v in params.items())
    url = f"http://{address('monitor1')}:{PROMETHEUS_PORT}/api/v1/{path}"
    answer = json.loads(sh(monitor, f"curl -sS -m 20 -G {args} {url}"))
    assert answer["status"] == "success", answer
    return answer["data"]


def query(expr):
    return api("query", query=expr)["result"]


def scalar(expr):
    result = query(expr)
    assert len(result) == 1, (expr, result)
    return float(result[0]["value"][1])


def scrape_interval_s():
    config = api("status/config")["yaml"]
    line = next(x for x in config.splitlines() if "scrape_interval:" in x)
    return float(line.split(":")[1].strip().rstrip("s"))


def settle(expr, timeout=60):
    """The value of `expr` once it stopped changing over two scrapes. A counter's series exists
    only from the first scrape after its first request (a restart of the units starts it
    again), so an empty answer means "not scraped yet", never a value."""
    wait = 2 * scrape_interval_s() + 1
    deadline = time.monotonic() + timeout
    last = None
    while True:
        result = query(expr)
        assert len(result) <= 1, (expr, result)
        now = float(result[0]["value"][1]) if result else None
        if now is not None and now == last:
            return now
        assert time.monotonic() < deadline, f"{expr} did not settle in {timeout} s: {last}, {now}"
        last = now
        time.sleep(wait)


def test_every_target_is_up():
    targets = api("targets", state="active")["activeTargets"]
    by_job = {}
    for target in targets:
        by_job.setdefault(target["labels"]["job"], []).append(target)
    down = [(t["labels"], t["lastError"]) for t in targets if t["health"] != "up"]
    assert down == [], down
    # One segserve target per app host and model (the lab serves every model on both app
    # hosts); one node exporter per host of the fleet; nginx's exporter and mtail on lb1.
    assert all("hosts" not in model for model in MODELS), MODELS
    served = len(MODELS) * len(APP_HOSTS)
    assert len(by_job.get("segserve", [])) == served, by_job.get("segserve")
    assert sorted(t["labels"]["host"] for t in by_job["node"]) == sorted(
        [*APP_HOSTS, "lb1", "monitor1"]
    )
    assert [t["labels"]["host"] for t in by_job["nginx"]] == ["lb1"]
    assert [t["labels"]["host"] for t in by_job["nginx_log"]] == ["lb1"]
    assert scalar('sum(up{job="segserve"})') == served


def test_rules_are_loaded_and_healthy():
    groups = api("rules")["groups"]
    assert {g["name"] for g in groups} >= RULES_GROUPS
    unhealthy = [
        (r["name"], r.get("lastError"))
        for g in groups
        for r in g["rules"]
        if r.get("health") != "ok"
    ]
    assert unhealthy == [], unhealthy


def test_a_known_burst_is_counted_exactly(host):
    """BURST photos through nginx from the outsider host: the app's request counters (summed
    over both hosts) and nginx's answers (mtail) grow by exactly BURST, and the rate
    Prometheus reports over the burst's window accounts for it."""
    app = 'sum(segserve_requests_total{job="segserve",endpoint="/v1/segment",status="200"})'
    edge = 'sum(segserve_nginx_responses_total{job="nginx_log",status="200"})'
    photo = host.check_output(f"ls {PHOTOS}/*.jpg").split()[0]

    def send(count):
        codes = sh(
            host,
            f"for i in $(seq {count}); do curl -sS -o /dev/null -w '%{{http_code}}\\n'"
            f" --max-time 60 -H 'Content-Type: image/jpeg' -H 'Accept: image/png'"
            f" --data-binary @{photo} http://{address('lb1')}/v1/segment; done",
        ).split()
        assert codes == ["200"] * count, codes

    # A counter has no series before its first request, and Prometheus counts no increase
    # into a series' first sample: one request to each app host first, so that both counters
    # exist before the burst (the other tests may not have sent any since the last restart).
    send(2 * len(APP_HOSTS))
    app_before, edge_before = settle(app), settle(edge)
    started = time.monotonic()
    send(BURST)
    assert settle(app) - app_before == BURST
    assert settle(edge) - edge_before == BURST
    # increase() over a window that holds the whole burst extrapolates to the window's edges
    # by at most one scrape interval on each side.
    window = int(time.monotonic() - started) + 30
    counted = scalar(
        f'sum(increase(segserve_requests_total{{job="segserve",endpoint="/v1/segment",'
        f'status="200"}}[{window}s]))'
    )
    assert BURST <= counted <= BURST * (1 + 2 * scrape_interval_s() / window) + 0.5, counted


@pytest.mark.parametrize(
    "expr",
    [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]],
)
def test_dashboard_query_returns_data(expr):
    """Each query as Grafana sends it, with every model chosen and a 1-minute rate window."""
    concrete = expr.replace("$model", ".*").replace("$__rate_interval", "1m")
    deadline = time.monotonic() + 60
    while not query(concrete):
        assert time.monotonic() < deadline, f"no data for {concrete}"
        time.sleep(5)


@pytest.mark.parametrize(
    "name, port",
    [
        *((name, NODE_PORT) for name in (*APP_HOSTS, "lb1")),
        ("lb1", NGINX_EXPORTER_PORT),
        ("lb1", MTAIL_PORT),
    ],
)
def test_exporters_answer_only_the_monitoring_host(name, port):
    url = f"http://{address(name)}:{port}/metrics"
    assert "# TYPE" in sh(fleet_host("monitor1"), f"curl -sS -m 10 {url}")
    refused = fleet_host("attacker").run(f"curl -sS -m 5 -o /dev/null {url}")
    assert refused.rc != 0, f"the attacker read {url}"
