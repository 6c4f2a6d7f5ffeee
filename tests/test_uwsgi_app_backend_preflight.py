"""The uwsgi_app preflight refuses a backend or precision the host could not serve, with a
message that says what to set."""

import pytest
from preflight import run_uwsgi_app_preflight


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            {"uwsgi_app_backend": "onnxruntime", "uwsgi_app_precision": "bf16"},
            "uwsgi_app_precision bf16 needs uwsgi_app_backend openvino; onnxruntime computes at",
        ),
        (
            {"uwsgi_app_backend": "auto", "uwsgi_app_precision": "bf16"},
            "auto chooses its precision itself",
        ),
        (
            {"uwsgi_app_backend": "openvino", "uwsgi_app_device": "cuda"},
            "uwsgi_app_backend openvino runs on the CPU only",
        ),
    ],
)
def test_a_backend_the_host_cannot_serve_is_refused(tmp_path, extra, message):
    run = run_uwsgi_app_preflight(tmp_path, **extra)
    assert run.returncode != 0
    assert message in " ".join(run.stdout.split()), run.stdout[-2000:]


def test_a_pinned_openvino_bf16_passes(tmp_path):
    run = run_uwsgi_app_preflight(
        tmp_path, uwsgi_app_backend="openvino", uwsgi_app_precision="bf16"
    )
    assert run.returncode == 0, run.stdout[-2000:]
