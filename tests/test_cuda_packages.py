"""The cuda role's driver package sets: headless compute-only by default, as NVIDIA's install
guide gives it per distribution and branch; the full set (X, GL) only when asked for; every
package covered by the branch pin."""

import fnmatch
import sys

import pytest
import yaml
from preflight import ROOT

sys.path.insert(0, str(ROOT / "tools"))
from rolevars import RoleVars, role_file  # noqa: E402

# Packages that carry the display stack (X, GL, Vulkan, settings GUI), or meta packages that
# pull it in (NVIDIA's cuda-drivers-580 depends on nvidia-driver and nvidia-settings: NVIDIA
# developer forum thread 353805; nvidia-open is its open-module counterpart).
DISPLAY_STACK = [
    "nvidia-open",
    "cuda-drivers*",
    "nvidia-driver",
    "nvidia-driver-libs",
    "nvidia-settings",
    "nvidia-xconfig",
    "xserver-xorg-video-nvidia*",
    "libgl*",
    "libegl*",
    "libglx*",
    "libgles*",
    "libnvidia-gl*",
    "nvidia-vulkan*",
]


def packages(distribution: str, **overrides) -> list[str]:
    distro = yaml.safe_load((ROOT / "roles/cuda/vars" / f"{distribution}.yml").read_text())
    layers = [role_file("cuda", "defaults"), role_file("cuda", "vars"), distro, overrides]
    return RoleVars.from_layers(layers)["__cuda_driver_packages"]


def display(names: list[str]) -> list[str]:
    return [n for n in names if any(fnmatch.fnmatch(n, p) for p in DISPLAY_STACK)]


@pytest.mark.parametrize(
    ("distribution", "overrides", "expected"),
    [
        ("Debian", {}, ["nvidia-driver-cuda", "nvidia-kernel-open-dkms"]),
        (
            "Debian",
            {"cuda_driver_kernel_modules": "proprietary"},
            ["nvidia-driver-cuda", "nvidia-kernel-dkms"],
        ),
        (
            "Ubuntu",
            {},
            [
                "libnvidia-compute-580",
                "nvidia-dkms-580-open",
                "nvidia-utils-580",
                "nvidia-compute-utils-580",
            ],
        ),
        (
            "Ubuntu",
            {"cuda_driver_kernel_modules": "proprietary"},
            [
                "libnvidia-compute-580",
                "nvidia-dkms-580",
                "nvidia-utils-580",
                "nvidia-compute-utils-580",
            ],
        ),
        # From branch 590 NVIDIA's Ubuntu packages drop the branch from their names.
        (
            "Ubuntu",
            {"cuda_driver_branch": "590"},
            ["libnvidia-compute", "nvidia-dkms-open", "nvidia-utils", "nvidia-compute-utils"],
        ),
    ],
)
def test_the_default_is_the_compute_only_set(distribution, overrides, expected):
    chosen = packages(distribution, **overrides)
    assert chosen == expected
    assert display(chosen) == []


@pytest.mark.parametrize("distribution", ["Debian", "Ubuntu"])
@pytest.mark.parametrize(
    ("modules", "meta"), [("open", "nvidia-open"), ("proprietary", "cuda-drivers")]
)
def test_the_full_set_is_an_option(distribution, modules, meta):
    chosen = packages(
        distribution, cuda_driver_package_set="full", cuda_driver_kernel_modules=modules
    )
    assert chosen == [meta]


@pytest.mark.parametrize("distribution", ["Debian", "Ubuntu"])
@pytest.mark.parametrize("package_set", ["compute", "full"])
@pytest.mark.parametrize("modules", ["open", "proprietary"])
@pytest.mark.parametrize("branch", ["580", "590"])
def test_every_chosen_package_is_held_by_the_branch_pin(distribution, package_set, modules, branch):
    overrides = {
        "cuda_driver_package_set": package_set,
        "cuda_driver_kernel_modules": modules,
        "cuda_driver_branch": branch,
    }
    pins = RoleVars("cuda")["__cuda_pin_packages"].split()
    chosen = packages(distribution, **overrides)
    assert [n for n in chosen if not any(fnmatch.fnmatch(n, p) for p in pins)] == []
    # NVIDIA's own lock is named for the branch (nvidia-driver-pinning-<branch>).
    lock = RoleVars("cuda", overrides=overrides)["__cuda_pinning_package"]
    assert lock == f"nvidia-driver-pinning-{branch}"


# A driver already on the host fixes the version the chosen set's packages are installed at
# (tasks/install.yml reads it with dpkg-query), so that a package the set adds cannot pull
# newer libraries under the loaded module; the operator's exact version wins over it.
INSTALL_VERSION_PLAY = """
- hosts: localhost
  gather_facts: false
  vars_files:
    - {root}/roles/cuda/defaults/main.yml
    - {root}/roles/cuda/vars/main.yml
  tasks:
    - name: First install, no driver on the host
      ansible.builtin.assert:
        that: __cuda_install_version == ''
      vars:
        __cuda_installed_dkms: {{stdout_lines: []}}
    - name: A driver's module package installed
      ansible.builtin.assert:
        that: __cuda_install_version == '580.95.05-1'
      vars:
        __cuda_installed_dkms:
          stdout_lines: ["ii  580.95.05-1", "rc  575.57.08-1"]
    - name: The operator's exact version first
      ansible.builtin.assert:
        that: __cuda_install_version == '580.105.08-1'
      vars:
        cuda_driver_package_version: 580.105.08-1
        __cuda_installed_dkms:
          stdout_lines: ["ii  580.95.05-1"]
    - name: Two module packages at different versions, none chosen
      ansible.builtin.assert:
        that: __cuda_install_version == ''
      vars:
        __cuda_installed_dkms:
          stdout_lines: ["ii  580.95.05-1", "ii  580.82.07-1"]
    - name: The dpkg-query step skipped (an exact version given)
      ansible.builtin.assert:
        that: __cuda_install_version == '580.95.05-1'
      vars:
        cuda_driver_package_version: 580.95.05-1
        __cuda_installed_dkms: {{skipped: true}}
"""


def test_the_driver_is_installed_at_the_version_already_on_the_host(tmp_path):
    from preflight import INVENTORY, run_playbook

    (tmp_path / "play.yml").write_text(INSTALL_VERSION_PLAY.format(root=ROOT))
    (tmp_path / "hosts.yml").write_text(INVENTORY)
    run = run_playbook(tmp_path / "play.yml", tmp_path / "hosts.yml")
    assert run.returncode == 0, run.stdout[-3000:]
    assert "failed=0" in run.stdout, run.stdout[-3000:]
