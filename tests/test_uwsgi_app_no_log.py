"""A weights URL that carries credentials never reaches the play's output, even when the
download fails; a URL without any is shown as usual, so the failure can be read. Two downloads:
the controller's, which converts the weights for a CPU host (auto), and a torch host's own."""

import grp
import os

import pytest
from preflight import run_tasks


def download(tmp_path, url, backend="auto"):
    home = tmp_path / "home"
    (home / "weights").mkdir(parents=True)
    extra = {
        "uwsgi_app_backend": backend,
        "uwsgi_app_controller_cache_dir": str(tmp_path / "cache"),
        "uwsgi_app_weights_url": url,
        "uwsgi_app_weights_sha256": "0" * 64,
        "uwsgi_app_home": str(home),
        "uwsgi_app_group": grp.getgrgid(os.getgid()).gr_name,
    }
    # The plan decides the download (the host has no weights file yet), then weights.yml runs.
    return run_tasks(tmp_path, "uwsgi_app", ["plan.yml", "weights.yml"], extra, gather_facts=True)


@pytest.mark.parametrize(
    ("url", "backend"),
    [
        ("http://fleet:s3cr3t-token@127.0.0.1:9/w.pth", "auto"),
        ("http://127.0.0.1:9/w.pth?X-Signature=s3cr3t-token", "auto"),
        ("http://fleet:s3cr3t-token@127.0.0.1:9/w.pth", "torch"),
    ],
)
def test_a_url_with_credentials_is_not_logged(tmp_path, url, backend):
    run = download(tmp_path, url, backend)
    assert run.returncode != 0, "the download cannot succeed: port 9 is closed"
    assert "s3cr3t-token" not in run.stdout + run.stderr
    assert "censored" in run.stdout
    # The download that failed is the one this host needs: the controller's, to convert the
    # weights for a CPU host; a torch host's own.
    failed = "to the controller for the conversion" if backend == "auto" else "file"
    assert f"Download the weights {failed}]" in run.stdout, run.stdout[-2000:]


def test_a_plain_url_is_logged(tmp_path):
    run = download(tmp_path, "http://127.0.0.1:9/plain-weights.pth")
    assert run.returncode != 0
    assert "plain-weights.pth" in run.stdout, run.stdout[-2000:]
