"""A lone worker is not recycled by request count: while it restarts nothing of its instance
answers (uWSGI's master notices the exit within its 1 s check, then the app loads; the bench
lost requests to it, bench/results/served-overhead-amx.md). Instances of several workers keep
max-requests, and an operator may ask for it on a lone worker too. Rendered on the controller
into tmp_path, as tasks/configure.yml renders them on a host."""

import re

from preflight import render_uwsgi_app_instances

# uwsgi_app_processes and uwsgi_app_recycle_single_worker of each instance.
INSTANCES = {
    "lone": (1, False),
    "pair": (2, False),
    "lone_recycled": (1, True),
}


def test_only_instances_of_several_workers_recycle_by_count(tmp_path):
    instances = {
        name: {
            "uwsgi_app_device": "cpu",
            "uwsgi_app_processes": processes,
            "uwsgi_app_recycle_single_worker": recycle,
        }
        for name, (processes, recycle) in INSTANCES.items()
    }
    run = render_uwsgi_app_instances(tmp_path, instances)
    assert run.returncode == 0, run.stdout[-3000:]

    def option(name, key):
        ini = (tmp_path / name / "uwsgi.ini").read_text()
        return int(re.search(rf"^{key} = (\d+)$", ini, re.M).group(1))

    assert option("lone", "processes") == 1
    assert option("lone", "max-requests") == 0  # uWSGI: 0 never recycles by count
    assert option("lone", "reload-on-rss") == 2048  # memory still recycles it
    assert option("pair", "processes") == 2
    assert option("pair", "max-requests") == 5000
    assert option("lone_recycled", "max-requests") == 5000
