from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from segserve import create_app
from segserve import weights as weights_mod

# Small inputs keep the in-process tests fast on 2 cores; the uWSGI test uses the default.
INPUT_SIZE = 96
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory) -> Path:
    """An untrained model made exactly as `segserve-weights init` makes it."""
    path = tmp_path_factory.mktemp("weights") / "lraspp-seed0.pth"
    weights_mod.save(weights_mod.init_payload("lraspp_mobilenet_v3_large", 0), path)
    return path


@pytest.fixture(scope="session")
def weights_sha(weights_file) -> str:
    return weights_mod.file_sha256(weights_file)


@pytest.fixture(scope="session")
def settings(weights_file) -> dict:
    return {
        "WEIGHTS_PATH": str(weights_file),
        "DEVICE": "cpu",
        "TORCH_THREADS": 1,
        "INPUT_SIZE": INPUT_SIZE,
    }


@pytest.fixture(scope="session")
def app(settings):
    # One app for the session, as one worker serves many requests; tests that change its
    # state do it with monkeypatch, which undoes it.
    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def small_app(settings):
    """Tight limits, to reach the 413 paths with small requests."""
    saved = Image.MAX_IMAGE_PIXELS
    small = create_app({**settings, "MAX_IMAGE_BYTES": 20_000, "MAX_PIXELS": 100_000})
    # Pillow's own limit is one per process (a worker has one app); keep the main app's so
    # that the other tests can still open the sample photos.
    Image.MAX_IMAGE_PIXELS = saved
    return small


@pytest.fixture(scope="session")
def varied_weights(tmp_path_factory):
    """The test device whose masks hold many classes (an untrained model's are uniform)."""
    path = tmp_path_factory.mktemp("varied") / "varied.pth"
    weights_mod.save(
        weights_mod.init_payload("lraspp_mobilenet_v3_large", 0, varied_masks=True), path
    )
    return path


@pytest.fixture(scope="session")
def converted(varied_weights):
    """The test device converted: (path, sha256, gate result, metadata)."""
    from segserve import convert

    out = varied_weights.with_suffix(".onnx")
    sha, figures, meta = convert.export_onnx(
        weights_mod.load(varied_weights), out, input_size=INPUT_SIZE
    )
    return out, sha, figures, meta


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uwsgi_command(port: int) -> list[str]:
    """uWSGI with the options the uwsgi_app role runs it with (app/uwsgi.ini, written from the
    role's own), on a plain HTTP socket of its own."""
    return [
        str(VENV_BIN / "uwsgi"),
        "--ini", str(Path(__file__).resolve().parent.parent / "uwsgi.ini"),
        "--http-socket", f"127.0.0.1:{port}",
    ]  # fmt: skip


def uwsgi_env(weights: Path | None, metrics_dir: Path | None, **extra: str) -> dict[str, str]:
    """The service's environment; `weights` None leaves SEGSERVE_WEIGHTS_PATH unset (an
    artifact backend reads its model from the artifact)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SEGSERVE_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(SEGSERVE_DEVICE="cpu", SEGSERVE_TORCH_THREADS="1")
    if weights is not None:
        env["SEGSERVE_WEIGHTS_PATH"] = str(weights)
    if metrics_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    env.update(extra)
    return env


class UwsgiServer:
    def __init__(
        self, weights: Path | None, workdir: Path, extra_args: tuple[str, ...] = (), **env: str
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "uwsgi.log"
        metrics_dir = workdir / "metrics"
        metrics_dir.mkdir()
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [*uwsgi_command(self.port), *extra_args],
            env=uwsgi_env(weights, metrics_dir, **env),
            cwd=workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.returncode: int | None = None

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uWSGI exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"uWSGI not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.returncode is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.returncode = self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.returncode = self.proc.wait()
            self._log.close()
        return self.returncode


# The uWSGI tests' body limit: 8 MiB, under the role's limit-post of 10 MiB.
APP_LIMIT = 8 * 1024 * 1024


@pytest.fixture(scope="session")
def uwsgi_server(weights_file, tmp_path_factory):
    """A real uWSGI with 2 workers, started as the issue describes, shared by the uWSGI and
    client tests; test_uwsgi.py's last test stops it and checks the shutdown."""
    if shutil.which("uwsgi", path=str(VENV_BIN)) is None:
        pytest.fail("uwsgi is not installed in the virtualenv (pip install pyuwsgi)")
    # The app's own body limit below uWSGI's limit-post (the role's, from app/uwsgi.ini): a
    # body over limit-post is cut without an answer by uWSGI itself, which nginx keeps from
    # happening in the fleet (it answers 413 at the same limit first). Below it, the app's
    # JSON 413 is what these tests can reach.
    # uWSGI's stats server, as the role runs it: it counts each worker's requests, which no
    # response names (and uWSGI's request log is off, as in the role).
    stats_port = free_port()
    server = UwsgiServer(
        weights_file,
        tmp_path_factory.mktemp("uwsgi"),
        ("--stats", f"127.0.0.1:{stats_port}", "--stats-http"),
        SEGSERVE_MAX_IMAGE_BYTES=str(APP_LIMIT),
    )
    server.stats_url = f"http://127.0.0.1:{stats_port}"
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
