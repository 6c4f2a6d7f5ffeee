"""The roles' preflights refuse settings that reopen a hole for hostile clients: passive
health checks that one request can trip on every host, a public /metrics, and a uwsgi
socket on an address the internet can reach."""

import os

import pytest
from preflight import run_preflight, run_uwsgi_app_preflight


def nginx(tmp_path, **extra):
    # Facts: the preflight checks the OS family (this controller is Debian, as the hosts).
    return run_preflight(tmp_path, "nginx", extra, gather_facts=True)


def test_the_nginx_defaults_pass(tmp_path):
    run = nginx(tmp_path)
    assert run.returncode == 0, run.stdout[-2000:]


@pytest.mark.parametrize("max_fails, tries", [(1, 2), (3, 0)])
def test_max_fails_with_retries_is_refused(tmp_path, max_fails, tries):
    run = nginx(tmp_path, nginx_upstream_max_fails=max_fails, nginx_upstream_next_tries=tries)
    assert run.returncode != 0
    assert "take hosts out of rotation at will" in run.stdout, run.stdout[-2000:]


def test_max_fails_without_retries_passes(tmp_path):
    run = nginx(tmp_path, nginx_upstream_max_fails=1, nginx_upstream_next_tries=1)
    assert run.returncode == 0, run.stdout[-2000:]


def test_a_public_metrics_path_is_refused(tmp_path):
    api = [{"path": "/v1/segment", "methods": ["POST"]}, {"path": "/metrics", "methods": ["GET"]}]
    run = nginx(tmp_path, nginx_public_api=api)
    assert run.returncode != 0
    assert "/metrics must not" in run.stdout, run.stdout[-2000:]


def uwsgi_app(tmp_path, address):
    return run_uwsgi_app_preflight(tmp_path, uwsgi_app_listen_address=address)


@pytest.mark.parametrize("address", ["10.1.2.3", "172.31.0.9", "192.168.7.1", "fd00:5e5::11"])
def test_a_private_listen_address_passes(tmp_path, address):
    run = uwsgi_app(tmp_path, address)
    assert run.returncode == 0, run.stdout[-2000:]


@pytest.mark.parametrize("address", ["203.0.113.7", "172.32.0.1", "0.0.0.0", "2001:db8::1", "::"])
def test_a_public_or_wildcard_listen_address_is_refused(tmp_path, address):
    run = uwsgi_app(tmp_path, address)
    assert run.returncode != 0
    assert "which is not a private" in run.stdout, run.stdout[-2000:]


def tls_key(tmp_path, mode):
    cert, key = tmp_path / "site.crt", tmp_path / "site.key"
    cert.write_text("not read by the preflight\n")
    key.write_text("not read by the preflight\n")
    key.chmod(mode)
    return nginx(
        tmp_path,
        nginx_tls_enabled=True,
        nginx_tls_certificate=str(cert),
        nginx_tls_certificate_key=str(key),
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="the key must be root's: run as root (as CI does)")
def test_a_private_tls_key_passes(tmp_path):
    run = tls_key(tmp_path, 0o600)
    assert run.returncode == 0, run.stdout[-2000:]


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o620])
def test_a_tls_key_others_can_read_or_change_is_refused(tmp_path, mode):
    run = tls_key(tmp_path, mode)
    assert run.returncode != 0
    assert "readable by nobody else" in run.stdout, run.stdout[-2000:]


@pytest.mark.parametrize(
    "name, value",
    [
        ("nginx_client_header_buffer_bytes", 512),
        ("nginx_client_header_buffers", 1),
        ("nginx_per_address_inflight_limit", -1),
        ("nginx_max_answer_bytes", -1),
    ],
)
def test_a_bad_nginx_limit_is_refused(tmp_path, name, value):
    run = nginx(tmp_path, **{name: value})
    assert run.returncode != 0
    assert "Sizes, timeouts, counts and worker settings" in run.stdout, run.stdout[-2000:]


@pytest.mark.parametrize(
    "name, value",
    [
        ("uwsgi_app_buffer_size", 70000),
        ("uwsgi_app_max_json_bytes", 0),
        ("uwsgi_app_memory_max_mb", -1),
        ("uwsgi_app_metrics_port", 8001),
    ],
)
def test_a_bad_uwsgi_app_setting_is_refused(tmp_path, name, value):
    run = run_uwsgi_app_preflight(tmp_path, **{name: value})
    assert run.returncode != 0
    assert "uwsgi_app_buffer_size between 4096 and" in run.stdout, run.stdout[-2000:]
