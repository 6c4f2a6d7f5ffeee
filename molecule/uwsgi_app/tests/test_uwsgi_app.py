"""The uwsgi_app role on one host: the service, its sandbox, its sockets, real inference."""

import json

SERVICE = "segserve"
HEALTH = "http://127.0.0.1:8002"


def curl(host, *args):
    result = host.run("curl -sS --max-time 60 " + " ".join(args))
    assert result.rc == 0, result.stderr
    return result.stdout


def sample_image(host):
    path = host.run(
        "/opt/segserve/venv/bin/python -c 'import segserve.samples as s; print(s.path())'"
    ).stdout.strip()
    assert host.file(path).exists, path
    return path


def test_service_running_and_enabled(host):
    service = host.service(SERVICE)
    assert service.is_running
    assert service.is_enabled


def test_service_user_has_no_login_shell(host):
    user = host.user("segserve")
    assert user.shell in ("/usr/sbin/nologin", "/sbin/nologin")
    assert user.uid < 1000


def test_workers_run_as_service_user(host):
    owners = host.check_output("ps -o user= -C uwsgi | sort -u").split()
    assert owners == ["segserve"]


def test_uwsgi_socket_on_private_address_only(host):
    address = host.interface("eth0").addresses[0]
    assert host.socket(f"tcp://{address}:8001").is_listening
    assert not host.socket("tcp://0.0.0.0:8001").is_listening


def test_health_and_stats_on_loopback_only(host):
    assert host.socket("tcp://127.0.0.1:8002").is_listening
    assert host.socket("tcp://127.0.0.1:8004").is_listening
    assert not host.socket("tcp://0.0.0.0:8002").is_listening


def test_ready(host):
    assert json.loads(curl(host, f"{HEALTH}/readyz"))


def test_model_reports_untrained_weights(host):
    model = json.loads(curl(host, f"{HEALTH}/v1/model"))
    assert model["arch"] == "lraspp_mobilenet_v3_large"
    assert model["pretrained"] is False
    expected = host.file("/etc/segserve/segserve.env").content_string
    assert f"SEGSERVE_WEIGHTS_SHA256={model['weights_sha256']}" in expected


def test_backend_chosen_on_the_host_and_served(host):
    """uwsgi_app_backend auto on a CPU host: the record of the timing on this host says what
    the service runs, and the service shows it."""
    env = host.file("/etc/segserve/segserve.env").content_string
    path = next(
        line.split("=", 1)[1]
        for line in env.splitlines()
        if line.startswith("SEGSERVE_BACKEND_CHOICE=")
    )
    record_file = host.file(path)
    assert (record_file.user, record_file.group, record_file.mode) == ("root", "segserve", 0o640)
    record = json.loads(record_file.content_string)
    chosen = record["chosen"]
    assert f"SEGSERVE_BACKEND={chosen['backend']}\n" in env
    assert f"SEGSERVE_PRECISION={chosen['precision']}\n" in env
    # Timed with the service's own layout: the two workers of the setting, one thread each.
    assert (record["key"]["workers"], record["key"]["threads"]) == (2, 1)
    timed = [c for c in record["candidates"] if "median_images_per_s" in c]
    assert {"onnxruntime fp32", "openvino fp32"} <= {c["label"] for c in timed}
    assert all(c["gate"]["passes"] and c["gate"]["decided_flips"] == 0 for c in timed)
    model = json.loads(curl(host, f"{HEALTH}/v1/model"))
    assert (model["backend"], model["precision"]) == (chosen["backend"], chosen["precision"])
    assert model["backend_choice"]["chosen"] == f"{chosen['backend']} {chosen['precision']}"


def test_two_workers_from_the_setting(host):
    stats = json.loads(host.check_output("curl -sS http://127.0.0.1:8004"))
    assert len(stats["workers"]) == 2


def test_workers_heap_asks_for_huge_pages(host):
    """uwsgi_app_malloc_huge_pages (the default): every worker runs with glibc's malloc asking
    for transparent huge pages, and unless the kernel's THP mode is `never` some of its memory
    may have them (a mapping the kernel marks THP-eligible: with the mode `madvise`, only what
    malloc asked for; whether a huge page was free at that moment is not the role's doing)."""
    master = host.check_output(f"systemctl show -p MainPID --value {SERVICE}")
    workers = host.check_output(f"pgrep -P {master} uwsgi").split()
    assert workers, f"no worker under the master {master}"
    thp = host.file("/sys/kernel/mm/transparent_hugepage/enabled").content_string
    for pid in workers:
        environ = host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ").splitlines()
        assert "GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in environ, (pid, environ)
        if "[never]" not in thp:
            eligible = host.check_output(f"grep -cE '^THPeligible: +1' /proc/{pid}/smaps || true")
            assert int(eligible) > 0, (pid, thp)


def test_segment_real_image_as_png(host):
    image = sample_image(host)
    out = "/tmp/mask.png"
    curl(
        host,
        "-H 'Content-Type: image/jpeg' -H 'Accept: image/png'",
        f"--data-binary @{image}",
        f"-o {out} -w '%{{http_code}}'",
        f"{HEALTH}/v1/segment",
    )
    sizes = host.check_output(
        "/opt/segserve/venv/bin/python -c "
        f"\"from PIL import Image; a=Image.open('{image}'); b=Image.open('{out}'); "
        'print(a.size == b.size, b.mode, max(b.getdata()) <= 20)"'
    )
    assert sizes.split() == ["True", "L", "True"]


def test_bad_input_gets_json_error_and_service_survives(host):
    body = curl(
        host, "-H 'Content-Type: image/png'", "--data-binary 'not an image'", f"{HEALTH}/v1/segment"
    )
    assert json.loads(body)["error"]
    assert host.service(SERVICE).is_running
    assert json.loads(curl(host, f"{HEALTH}/readyz"))


def env_value(host, key):
    env = host.file("/etc/segserve/segserve.env").content_string
    return next(line.split("=", 1)[1] for line in env.splitlines() if line.startswith(key + "="))


def test_converted_model_pinned_and_readable_by_service_only(host):
    """Made on the controller and shipped like the weights: named by its sha256, which the
    service environment pins; the host has no weights file to load (no torch to load it)."""
    path = env_value(host, "SEGSERVE_ONNX_PATH")
    sha = env_value(host, "SEGSERVE_ONNX_SHA256")
    f = host.file(path)
    assert f.user == "root" and f.group == "segserve" and f.mode == 0o640
    assert path == f"/opt/segserve/weights/{sha}.onnx" and f.sha256sum == sha
    assert host.run("ls /opt/segserve/weights/*.pth").rc != 0
    assert "SEGSERVE_WEIGHTS_PATH=" not in host.file("/etc/segserve/segserve.env").content_string


def test_a_lock_change_removes_what_the_new_lock_does_not_pin(host):
    """side_effect.yml left mpmath (pinned only by the lock with torch) in the virtualenv and
    made its requirements record stale, as an upgrade from a torch host does; the deploy after
    it must have removed it, and still serve."""
    assert host.file("/root/molecule-leftover-planted").exists, "side_effect.yml did not run"
    listed = host.check_output("/opt/segserve/venv/bin/python -m pip list --format=json")
    assert "mpmath" not in {p["name"].lower() for p in json.loads(listed)}
    assert json.loads(curl(host, f"{HEALTH}/readyz"))


def test_cpu_host_virtualenv_has_no_torch_and_fits(host):
    """A CPU host serving the converted model installs requirements-cpu.lock: no torch, no
    CUDA wheels, and a virtualenv of at most 600 MB (one with torch is about 5.7 GB)."""
    venv = "/opt/segserve/venv"
    listed = json.loads(host.check_output(f"{venv}/bin/python -m pip list --format=json"))
    names = {p["name"].lower() for p in listed}
    assert not names & {"torch", "torchvision", "triton"}, names
    assert not [n for n in names if n.startswith(("nvidia", "cuda"))], names
    assert {"onnxruntime", "openvino", "flask"} <= names
    size_mb = int(host.check_output(f"du -sm {venv}").split()[0])
    print(f"virtualenv: {size_mb} MB")
    assert size_mb <= 600, f"{venv} is {size_mb} MB"


def test_firewall_rejects_non_lb_source(host):
    """No lb host in this scenario: nobody may reach the uwsgi port, not even the host from
    its own private address. Two layers refuse it, each on its own: nftables answers with a
    reset; with the table gone, the unit's IPAddressDeny still drops the packets.

    The control: with both lifted, the same connection goes through.
    """
    address = host.interface("eth0").addresses[0]
    assert host.socket(f"tcp://{address}:8001").is_listening
    connect = f"python3 -c \"import socket; socket.create_connection(('{address}', 8001), 3)\""
    blocked = host.run(connect)
    assert blocked.rc != 0
    assert "ConnectionRefusedError" in blocked.stderr
    with host.sudo():
        host.check_output("nft delete table inet segserve")
        try:
            dropped = host.run(connect)
            assert dropped.rc != 0 and "TimeoutError" in dropped.stderr, dropped.stderr
            # Runtime properties (/run/systemd/system.control) apply to the running unit.
            host.check_output(f"systemctl set-property --runtime {SERVICE} IPAddressDeny=")
            try:
                assert host.run(connect).rc == 0
            finally:
                host.check_output(f"systemctl set-property --runtime {SERVICE} IPAddressDeny=any")
            again = host.run(connect)
            assert again.rc != 0 and "TimeoutError" in again.stderr, again.stderr
        finally:
            host.check_output(
                f"rm -rf /run/systemd/system.control/{SERVICE}.service.d"
                " && systemctl daemon-reload && nft -f /etc/nftables.d/segserve.nft"
            )
    assert host.run(connect).rc != 0


def test_unit_is_sandboxed(host):
    props = host.check_output(
        f"systemctl show {SERVICE} -p NoNewPrivileges -p ProtectSystem -p ProtectHome "
        "-p PrivateTmp -p User"
    )
    assert "NoNewPrivileges=yes" in props
    assert "ProtectSystem=strict" in props
    assert "ProtectHome=yes" in props
    assert "PrivateTmp=yes" in props
    assert "User=segserve" in props


def test_metrics_aggregate_workers(host):
    text = curl(host, f"{HEALTH}/metrics")
    assert "segserve_stage_seconds" in text
    assert "segserve_requests_total" in text
