"""roles/cuda's test hooks stand in for GPUs that are not there: each one set without
cuda_fake_gpus (as on a real host, by mistake) stops the play in preflight, naming it."""

import pytest
from preflight import run_preflight

# Each hook with a value that sets it.
HOOKS = {
    "cuda_fake_driver_version": "535.216.01",
    "cuda_fake_nvswitches": 4,
    "cuda_fake_secure_boot": True,
    "cuda_fake_module_version": "535.247.01",
}
FAKE_GPU = [{"name": "NVIDIA H200", "memory_mib": 143771}]
# What else a host with the hook needs to pass preflight: Secure Boot on needs the DKMS key.
WITH = {"cuda_fake_secure_boot": {"cuda_secure_boot_key_enrolled": True}}


@pytest.mark.parametrize("hook", HOOKS)
def test_a_hook_without_fake_gpus_is_refused(tmp_path, hook):
    run = run_preflight(tmp_path, "cuda", {hook: HOOKS[hook]}, gather_facts=True)
    assert run.returncode != 0, run.stdout[-2000:]
    message = run.stdout[run.stdout.find("cuda_fake_gpus items need") :]
    assert "are used only with cuda_fake_gpus" in message, run.stdout[-2000:]
    assert hook in message and "leave them unset on real hosts" in message, message[:600]


@pytest.mark.parametrize("hook", HOOKS)
def test_a_hook_with_fake_gpus_passes(tmp_path, hook):
    run = run_preflight(
        tmp_path,
        "cuda",
        {"cuda_fake_gpus": FAKE_GPU, hook: HOOKS[hook], **WITH.get(hook, {})},
        gather_facts=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
