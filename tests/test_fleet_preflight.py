"""The segserve role's preflight refuses fleet values no tier could enforce, naming each one,
and accepts the edge of every range."""

from preflight import run_preflight

# Each bad value, and the words of its refusal.
BAD = {
    "segserve_max_image_bytes": (0, "segserve_max_image_bytes is 0: it must be a positive"),
    "segserve_max_json_bytes": (-1, "segserve_max_json_bytes is -1: it must be a positive"),
    "segserve_harakiri_s": (1, "segserve_harakiri_s is 1: it must be at least 2 seconds"),
    "segserve_uwsgi_port": (65536, "segserve_uwsgi_port is 65536: it must be a port"),
    "segserve_app_serial": ("0%", "segserve_app_serial is 0%: it must be a number of hosts"),
    "segserve_gpu_serial": ("101%", "segserve_gpu_serial is 101%: it must be a number of hosts"),
}


def test_every_bad_fleet_value_is_refused_by_name(tmp_path):
    # The check loops over the values and fails on each bad one, so one run shows them all.
    run = run_preflight(tmp_path, "segserve", {name: bad for name, (bad, _) in BAD.items()})
    assert run.returncode != 0, run.stdout[-3000:]
    for name, (_, words) in BAD.items():
        assert words in run.stdout, f"{name} not refused:\n{run.stdout[-3000:]}"


def test_the_edges_of_every_range_pass(tmp_path):
    edges = {
        "segserve_max_image_bytes": 1,
        "segserve_max_json_bytes": 1,
        "segserve_harakiri_s": 2,
        "segserve_uwsgi_port": 65535,
        "segserve_app_serial": "100%",
        "segserve_gpu_serial": 3,
    }
    run = run_preflight(tmp_path, "segserve", edges)
    assert run.returncode == 0, run.stdout[-3000:]
