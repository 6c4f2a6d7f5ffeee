"""The cuda role's apt pin and unattended-upgrades blacklist cover every driver package, and
tasks/hold.yml refuses an installed driver package that none of the pin's patterns covers."""

import fnmatch
import re
import subprocess
import sys

from preflight import ROOT, run_tasks

sys.path.insert(0, str(ROOT / "tools"))
from rolevars import RoleVars  # noqa: E402

# Driver packages NVIDIA's CUDA repository installs on Debian (as listed for 550.163.01-2 on
# Debian 13 with cuda-keyring, gist HUGHNew/1490c4ba552bea45ebf023b7b00046fd), the compute
# set and the meta packages the role names.
DRIVER_PACKAGES = [
    "libcuda1",
    "libnvidia-ptxjitcompiler1",
    "libnvidia-pkcs11-openssl3",
    "nvidia-smi",
    "libnvidia-ml1",
    "nvidia-driver",
    "nvidia-driver-libs",
    "libgl1-nvidia-glvnd-glx",
    "libnvidia-cfg1",
    "nvidia-egl-icd",
    "nvidia-kernel-dkms",
    "firmware-nvidia-gsp",
    "libglx-nvidia0",
    "libegl-nvidia0",
    "libnvidia-glcore",
    "libnvidia-eglcore",
    "libnvidia-gpucomp",
    "libnvidia-glvkspirv",
    "xserver-xorg-video-nvidia",
    "nvidia-vdpau-driver",
    "nvidia-kernel-support",
    "nvidia-settings",
    "nvidia-driver-cuda",
    "nvidia-kernel-open-dkms",
    "nvidia-persistenced",
    "nvidia-open",
    "cuda-drivers",
    "libnvcuvid1",
    "libnvidia-encode1",
    "libxnvctrl0",
    "libnvoptix1",
    "libgles-nvidia2",
    "nvidia-fabricmanager",
]


def test_every_driver_package_is_pinned_and_kept_from_unattended_upgrades():
    variables = RoleVars("cuda")
    pins = variables["__cuda_pin_packages"].split()
    blacklist = [re.compile(p) for p in variables["__cuda_unattended_blacklist"]]
    unpinned = [n for n in DRIVER_PACKAGES if not any(fnmatch.fnmatch(n, p) for p in pins)]
    unlisted = [n for n in DRIVER_PACKAGES if not any(p.match(n) for p in blacklist)]
    assert (unpinned, unlisted) == ([], [])


def hold(tmp_path, **extra):
    """tasks/hold.yml against this machine's real dpkg database, nothing held: bash stands in
    for a driver package, its upstream version for the driver's."""
    version = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "bash"], capture_output=True, text=True, check=True
    ).stdout
    upstream = version.split("-")[0]
    inputs = {
        "cuda_install_packages": True,
        "cuda_hold_packages": False,
        "__cuda_module_installed_version": upstream,
    }
    return upstream, run_tasks(tmp_path, "cuda", "hold.yml", {**inputs, **extra})


def test_a_driver_package_a_pin_pattern_covers_passes(tmp_path):
    # The role's glob-to-regex conversion, as Ansible renders it: "ba*" must cover bash.
    pins = RoleVars("cuda")["__cuda_pin_packages"] + " ba*"
    _, run = hold(tmp_path, __cuda_pin_packages=pins)
    assert run.returncode == 0, run.stdout[-3000:]


def test_an_installed_driver_package_the_pin_misses_is_refused(tmp_path):
    upstream, run = hold(tmp_path)
    assert run.returncode != 0, run.stdout[-3000:]
    assert f"bash (driver {upstream}) match" in run.stdout, run.stdout[-3000:]
    assert "none of the pin's patterns" in run.stdout, run.stdout[-3000:]
