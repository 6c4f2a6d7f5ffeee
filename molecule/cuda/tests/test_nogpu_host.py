"""cuda-nogpu1: in the gpu group, no NVIDIA GPU, cuda_require_gpu false: nothing changes."""

import pytest

testinfra_hosts = ["cuda-nogpu1"]


@pytest.mark.parametrize(
    "path",
    [
        "/etc/apt/sources.list.d/nvidia-cuda.sources",
        "/etc/apt/keyrings/nvidia-cuda.gpg",
        "/etc/apt/preferences.d/nvidia-cuda.pref",
        "/etc/apt/apt.conf.d/51nvidia-cuda-unattended-upgrades",
        "/etc/modprobe.d/blacklist-nouveau.conf",
        "/etc/systemd/system/nvidia-persistenced.service.d",
        "/etc/ansible/facts.d/cuda.fact",
    ],
)
def test_role_wrote_nothing(host, path):
    assert not host.file(path).exists


def test_no_nvidia_pci_device(host):
    vendors = host.run("cat /sys/bus/pci/devices/*/vendor").stdout.split()
    assert "0x10de" not in vendors


def test_role_installed_nothing(host):
    assert not host.package("pciutils").is_installed
