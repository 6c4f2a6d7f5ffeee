"""CUDA smoke test, run by tasks/cuda_smoke.yml with the service's own virtualenv on a GPU host:
torch sees every GPU the host has, a small computation gives the right answer on each, and
each GPU's compute capability is one this torch build has kernels for (a CUDA 13 build has
none below sm_75: Maxwell, Pascal and Volta were dropped in CUDA 13.0). Prints one JSON line;
on a problem prints what is wrong and exits 1.

    python cuda_smoke.py EXPECTED_GPUS
"""

import json
import re
import sys


def fail(reason: str) -> None:
    print(f"CUDA smoke test failed: {reason}")
    sys.exit(1)


def main(expected: int) -> None:
    import torch

    if torch.version.cuda is None:
        fail(f"torch {torch.__version__} is a CPU-only build: install the CUDA build")
    if not torch.cuda.is_available():
        fail(
            f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: check "
            "nvidia-smi, the driver's version against the build, and the /dev/nvidia* nodes"
        )
    found = torch.cuda.device_count()
    if found != expected:
        fail(f"torch sees {found} of this host's {expected} GPUs (cuda_gpu_count)")
    archs = [a for a in torch.cuda.get_arch_list() if a.startswith("sm_")]
    # "sm_90a" names an architecture-specific variant of sm_90.
    lowest = min(int(re.match(r"sm_(\d+)", a).group(1)) for a in archs)
    gpus = []
    for index in range(found):
        major, minor = torch.cuda.get_device_capability(index)
        name = torch.cuda.get_device_name(index)
        if major * 10 + minor < lowest:
            fail(
                f"GPU {index} ({name}) has compute capability {major}.{minor}, below the "
                f"sm_{lowest} this torch (CUDA {torch.version.cuda}) was built for at least"
            )
        total = (torch.ones(4096, device=f"cuda:{index}") * 2).sum().item()
        if total != 8192:
            fail(f"GPU {index} ({name}) computed {total} for 4096 x 2")
        gpus.append({"index": index, "name": name, "capability": f"{major}.{minor}"})
    print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": gpus}))


if __name__ == "__main__":
    main(int(sys.argv[1]))
