"""cuda-gpu1: a GPU host stand-in (test hooks), NVIDIA repository served locally."""

import json
import os

import pytest

testinfra_hosts = ["cuda-gpu1"]

SOURCES = "/etc/apt/sources.list.d/nvidia-cuda.sources"
KEYRING = "/etc/apt/keyrings/nvidia-cuda.gpg"
PIN = "/etc/apt/preferences.d/nvidia-cuda.pref"
UNATTENDED = "/etc/apt/apt.conf.d/51nvidia-cuda-unattended-upgrades"
PERSISTENCED = "/etc/systemd/system/nvidia-persistenced.service"
DROPIN = "/etc/systemd/system/nvidia-persistenced.service.d/10-persistence-mode.conf"


def _expected_fingerprint():
    path = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "cuda-test-keyring.fpr")
    with open(path, encoding="ascii") as handle:
        return handle.read().strip()


def test_prerequisites_installed(host):
    for name in ("gpg", "kmod", "pciutils", "ca-certificates"):
        assert host.package(name).is_installed, name


def test_keyring_installed(host):
    keyring = host.file(KEYRING)
    assert keyring.is_file
    assert keyring.user == "root" and keyring.mode == 0o644


def test_keyring_carries_expected_fingerprint(host):
    out = host.check_output(f"gpg --batch --show-keys --with-colons {KEYRING}")
    assert f":{_expected_fingerprint()}:" in out


def test_source_signed_by_keyring(host):
    content = host.file(SOURCES).content_string
    assert "URIs: file:///srv/cuda-test-repo/" in content
    assert "Suites: /" in content
    assert f"Signed-By: {KEYRING}" in content


def test_cuda_keyring_package_list_absent(host):
    assert not host.file("/etc/apt/sources.list.d/cuda-debian12-x86_64.list").exists


def test_apt_update_verifies_repository_signature(host):
    result = host.run("apt-get update --error-on=any")
    output = result.stdout + result.stderr
    assert result.rc == 0, output
    assert "file:/srv/cuda-test-repo" in output
    assert "NO_PUBKEY" not in output and "not signed" not in output


@pytest.mark.parametrize("package", ["nvidia-driver-cuda", "nvidia-open"])
def test_driver_pinned_to_branch(host, package):
    # The compute-only set (the default) and the full set's meta package alike.
    policy = host.check_output(f"apt-cache policy {package}")
    assert "590.44.01-1" in policy, policy  # a newer branch is available...
    assert "Candidate: 580.95.05-1" in policy, policy  # ...and the pin refuses it


def test_pin_file(host):
    content = host.file(PIN).content_string
    assert "Pin: version 580.*" in content
    assert "Pin-Priority: 1001" in content


def test_unattended_upgrades_blacklist_parsed_by_apt(host):
    assert host.file(UNATTENDED).mode == 0o644
    dump = host.check_output("apt-config dump Unattended-Upgrade::Package-Blacklist")
    for pattern in ("nvidia-", "libnvidia-", "cuda-", "libcuda"):
        assert f'"{pattern}"' in dump, dump


def test_nouveau_blacklisted_for_modprobe(host):
    content = host.file("/etc/modprobe.d/blacklist-nouveau.conf").content_string
    assert "blacklist nouveau" in content
    config = host.check_output("modprobe --showconfig")
    assert "blacklist nouveau" in config
    assert "options nouveau modeset=0" in config


def test_persistenced_unmasked(host, journal):
    unit = host.file(PERSISTENCED)
    assert not (unit.is_symlink and unit.linked_to == "/dev/null"), journal("nvidia-persistenced")
    state = host.run("systemctl is-enabled nvidia-persistenced.service").stdout.strip()
    assert state != "masked", journal("nvidia-persistenced")


def test_persistenced_dropin_turns_persistence_mode_on(host):
    dropin = host.file(DROPIN)
    assert dropin.mode == 0o644
    exec_lines = [
        line for line in dropin.content_string.splitlines() if line.startswith("ExecStart=")
    ]
    assert exec_lines[0] == "ExecStart=", exec_lines  # clears the packaged command
    assert "--persistence-mode" in exec_lines[1].split(), exec_lines
    assert "--no-persistence-mode" not in exec_lines[1].split(), exec_lines


def test_local_facts_for_app_role(host):
    facts = json.loads(host.file("/etc/ansible/facts.d/cuda.fact").content_string)
    assert facts["gpu_count"] == 2
    assert facts["gpu_memory_mib"] == [81559, 81559]
    assert facts["driver_version"] == "580.95.05"
    assert facts["torch_cuda_version"] == "13.0"
    assert facts["min_driver_for_torch"] == "580.65.06"
    assert facts["reboot_required"] is False


def test_nvswitch_host_gets_fabric_manager_at_the_drivers_version(host):
    # From branch 580 NVIDIA's repository names it without the branch; the version is the
    # driver's own, with any packaging revision.
    facts = json.loads(host.file("/etc/ansible/facts.d/cuda.fact").content_string)
    assert facts["nvswitch_count"] == 4
    assert facts["fabricmanager"] == ["nvidia-fabricmanager=580.95.05*"]


def test_impostor_key_refused_and_removed(host):
    assert not host.file("/etc/apt/keyrings/nvidia-cuda.asc").exists


def test_driver_packages_not_installed(host):
    # The lab runs with cuda_install_packages: false; the stubs must stay uninstalled.
    for package in ("nvidia-driver-cuda", "nvidia-kernel-open-dkms", "nvidia-open", "cuda-drivers"):
        assert not host.package(package).is_installed, package
