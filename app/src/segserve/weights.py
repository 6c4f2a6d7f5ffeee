"""The weights file: what it holds, how it is written, and how it is checked before use.

A weights file is a plain dict written with torch.save and read with
torch.load(weights_only=True), so loading it can never run code from the file:

    {"format": "segserve-weights/1", "arch": str, "num_classes": int, "categories": [str],
     "pretrained": bool, "source": str, "seed": int | None, "state_dict": {name: tensor}}

`pretrained` is False for a seeded initialisation: such a model produces meaningless masks,
and the service says so loudly rather than letting it pass for a real one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from segserve import config
from segserve.errors import StartupError
from segserve.models import ARCHS, NUM_CLASSES, VOC_CATEGORIES, build_model

FORMAT = "segserve-weights/1"


class WeightsError(StartupError):
    """The weights file is missing, unreadable, or not the one the settings ask for."""


@dataclass(frozen=True)
class WeightsFile:
    path: str
    sha256: str
    arch: str
    num_classes: int
    categories: tuple[str, ...]
    pretrained: bool
    source: str
    seed: int | None
    state_dict: dict[str, Any] = field(repr=False)

    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "categories": list(self.categories),
            "pretrained": self.pretrained,
            "source": self.source,
            "seed": self.seed,
            "sha256": self.sha256,
            "path": self.path,
        }


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_file_sha256(path: str) -> str:
    """A weights file's sha256, or a WeightsError saying why it cannot be read. Also what an
    artifact backend checks a given weights file by, without loading it."""
    if not os.path.isfile(path):
        raise WeightsError(f"weights file not found: {path}")
    try:
        return file_sha256(path)
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc.strerror or exc}") from None


# init --varied-masks: the final classifier convolutions' weights are multiplied by this and
# their biases zeroed (see init_payload).
VARIED_MASKS_SCALE = 1000.0


def init_payload(arch: str, seed: int, *, varied_masks: bool = False) -> dict[str, Any]:
    """An untrained, seeded initialisation: the same seed gives the same tensors.

    A plain init gives one class everywhere (its classifier biases dominate tiny logits).
    `varied_masks` makes a TEST DEVICE, not a model: the classifier convolutions that output
    the class logits get zero bias and weights scaled by VARIED_MASKS_SCALE, so that the
    logits follow the image (spread about 1-2, like a trained model's order of magnitude)
    and a mask holds 15-18 classes. Its masks are still meaningless; what it is for is an
    equivalence check that is not trivially passed by uniform masks.
    """
    import torch

    _check_arch(arch)
    # fork_rng keeps the caller's random state untouched; devices=[] keeps CUDA out of it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(arch, NUM_CLASSES)
    source = f"init:seed={seed}"
    if varied_masks:
        source += ":varied-masks"
        with torch.no_grad():
            for module in model.classifier.modules():
                if isinstance(module, torch.nn.Conv2d) and module.out_channels == NUM_CLASSES:
                    module.weight.mul_(VARIED_MASKS_SCALE)
                    if module.bias is not None:
                        module.bias.zero_()
    return _payload(arch, model.state_dict(), pretrained=False, source=source, seed=seed)


def pretrained_payload(arch: str, state_dict_file: str | None = None) -> dict[str, Any]:
    """torchvision's pretrained weights for `arch`, from the network or from a local copy.

    `state_dict_file` is the .pth file torchvision publishes (downloaded elsewhere, e.g. on an
    air-gapped fleet); without it the file is fetched through torch.hub, which checks the hash
    embedded in its name and reuses $TORCH_HOME's cache.
    """
    import torch
    import torchvision.models.segmentation as seg

    _check_arch(arch)
    enum_name, member = ARCHS[arch].pretrained.split(".")
    weights = getattr(getattr(seg, enum_name), member)
    if state_dict_file is not None:
        try:
            state_dict = torch.load(state_dict_file, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsError(f"cannot read {state_dict_file}: {_one_line(exc)}") from None
        source = f"torchvision:{weights}:file={os.path.basename(state_dict_file)}"
    else:
        # torch.hub writes a "Downloading: ..." line to stdout, even when it then fails; the
        # CLI's stdout is only the sha256, and it reports the outcome in one line of its own.
        try:
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                state_dict = weights.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:
            raise WeightsError(
                f"cannot download {weights.url}: {_one_line(exc)} (offline? fetch that file "
                "elsewhere and pass it with --from-file, or use `segserve-weights init`)"
            ) from None
        source = f"torchvision:{weights}"
    model = build_model(arch, NUM_CLASSES)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise WeightsError(f"those weights do not fit {arch}: {summarize(exc)}") from None
    return _payload(
        arch,
        model.state_dict(),
        pretrained=True,
        source=source,
        seed=None,
        categories=weights.meta.get("categories"),
    )


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], prefix: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside `path`; once the block succeeds it replaces `path`.

    Readers never see a half-written file, and a failure leaves nothing behind.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save(payload: dict[str, Any], path: str | os.PathLike[str]) -> str:
    """Write atomically (a half-written file must never be loaded) and return its sha256."""
    import torch

    # Through a file object: torch names the archive after a path, and a dotfile name is refused.
    with atomic_output(path, ".segserve-weights-") as tmp, open(tmp, "wb") as fh:
        torch.save(payload, fh)
    return file_sha256(path)


def load(
    path: str | os.PathLike[str],
    *,
    expected_sha256: str | None = None,
    expected_arch: str | None = None,
) -> WeightsFile:
    """Read and check a weights file; every failure is a WeightsError with a one-line reason."""
    import torch

    path = os.fspath(path)
    sha = weights_file_sha256(path)
    # The hash is checked before deserialising: a file that is not the expected one is
    # never parsed at all.
    if expected_sha256 is not None and sha != expected_sha256.lower():
        raise WeightsError(
            f"weights sha256 mismatch: file {path} has {sha}, expected {expected_sha256.lower()}"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"cannot load weights file {path} (not a segserve weights file?): {_one_line(exc)}"
        ) from None

    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise WeightsError(
            f"{path} is not a segserve weights file (format {found!r}, expected {FORMAT!r}); "
            "make one with `segserve-weights init` or `segserve-weights export`"
        )
    arch = payload.get("arch")
    if arch not in ARCHS:
        raise WeightsError(f"{path} records an unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    if expected_arch is not None and arch != expected_arch:
        raise WeightsError(
            f"weights arch mismatch: file {path} holds {arch}, {config.ARCH.env} asks for "
            f"{expected_arch}"
        )
    state_dict = payload.get("state_dict")
    categories = payload.get("categories")
    num_classes = payload.get("num_classes")
    if (
        not isinstance(state_dict, dict)
        or not isinstance(num_classes, int)
        or not isinstance(categories, list)
        or len(categories) != num_classes
    ):
        raise WeightsError(f"{path} is incomplete: state_dict, num_classes or categories missing")
    seed = payload.get("seed")
    return WeightsFile(
        path=path,
        sha256=sha,
        arch=arch,
        num_classes=num_classes,
        categories=tuple(str(c) for c in categories),
        pretrained=bool(payload.get("pretrained")),
        source=str(payload.get("source", "")),
        seed=seed if isinstance(seed, int) else None,
        state_dict=state_dict,
    )


def _payload(
    arch: str,
    state_dict: dict[str, Any],
    *,
    pretrained: bool,
    source: str,
    seed: int | None,
    categories: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "arch": arch,
        "num_classes": NUM_CLASSES,
        "categories": list(categories or VOC_CATEGORIES),
        "pretrained": pretrained,
        "source": source,
        "seed": seed,
        # clone(): a state_dict shares storage with the module; the file must hold only
        # the tensors themselves.
        "state_dict": {k: v.detach().clone().contiguous() for k, v in state_dict.items()},
    }


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise WeightsError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def summarize(exc: BaseException, limit: int = 300) -> str:
    """A multi-line error (load_state_dict lists every key) as one bounded line."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."
