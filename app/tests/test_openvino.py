"""The openvino backend: the same artifact as onnxruntime, served at float32 and, where this
CPU computes it, bfloat16; each precision through the agreement gate against eager PyTorch."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from segserve import create_app, gate, openvino_backend
from segserve import weights as w
from segserve.config import Settings
from segserve.errors import ConfigError, StartupError
from segserve.models import build_model

from conftest import INPUT_SIZE
from photos import encode, photo

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")

HAS_BF16 = "bf16" in openvino_backend.host_precisions()


def _settings(varied_weights, converted, **extra):
    values = {
        "WEIGHTS_PATH": str(varied_weights),
        "DEVICE": "cpu",
        "TORCH_THREADS": 1,
        "INPUT_SIZE": INPUT_SIZE,
        "BACKEND": "openvino",
        "ONNX_PATH": str(converted[0]),
    }
    return {**values, **extra}


def _eager(varied_weights):
    weights = w.load(varied_weights)
    model = build_model(weights.arch, weights.num_classes)
    model.load_state_dict(weights.state_dict)
    model.eval()

    def run(batch):
        with torch.inference_mode():
            return model(torch.from_numpy(batch))["out"].numpy()

    return run


def _openvino(converted, precision, transform=lambda batch: batch):
    _, compiled = openvino_backend.compile_artifact(str(converted[0]), precision, 1)
    request = compiled.create_infer_request()

    def run(batch):
        out = request.infer({"input": transform(batch)})
        return out[compiled.output("class_ids")], out[compiled.output("logits")]

    return run


def _gate(varied_weights, converted, precision, **kw):
    return gate.evaluate(
        _eager(varied_weights),
        _openvino(converted, precision, **kw),
        precision=precision,
        depth=int(converted[3]["rounding_depth"]),
        input_size=INPUT_SIZE,
    )


def test_serves_a_real_photo(varied_weights, converted):
    client = create_app(_settings(varied_weights, converted)).test_client()
    response = client.post(
        "/v1/segment",
        data=encode(photo("chelsea.jpg"), "JPEG"),
        headers={"Content-Type": "image/jpeg", "Accept": "image/png"},
    )
    assert response.status_code == 200, response.get_json()
    mask = np.asarray(Image.open(io.BytesIO(response.data)))
    assert mask.shape == (300, 451)
    assert len(np.unique(mask)) >= 5
    model = client.get("/v1/model").get_json()
    assert (model["backend"], model["precision"]) == ("openvino", "fp32")


def test_fp32_passes_the_gate(varied_weights, converted):
    result = _gate(varied_weights, converted, "fp32")
    assert result.passes, result.table()


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no native bfloat16")
def test_bf16_passes_the_gate_with_its_own_bound(varied_weights, converted):
    result = _gate(varied_weights, converted, "bf16")
    assert result.passes, result.table()
    # Reduced precision really is reduced: ties flip, unlike float32's 99.999%.
    assert result.pixel_agreement < 0.9999
    # Held to float32's bound, the same bf16 masks fail: the bound is what lets it pass.
    strict = gate.evaluate(
        _eager(varied_weights),
        _openvino(converted, "bf16"),
        precision="fp32",
        depth=result.depth,
        input_size=INPUT_SIZE,
    )
    assert strict.decided_flips > 0


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no native bfloat16")
def test_bf16_served_and_shown(varied_weights, converted):
    app = create_app(_settings(varied_weights, converted, PRECISION="bf16"))
    client = app.test_client()
    response = client.post(
        "/v1/segment", data=encode(photo("coffee.jpg"), "JPEG"), headers={"Accept": "image/png"}
    )
    assert response.status_code == 200
    assert client.get("/v1/model").get_json()["precision"] == "bf16"
    assert app.extensions["segserve"].backend.describe()["precision"] == "bf16"


@pytest.mark.parametrize("precision", ["fp32", *(["bf16"] if HAS_BF16 else [])])
def test_wrong_input_fails_the_gate_on_decided_pixels(varied_weights, converted, precision):
    """Channels in BGR order, a real mistake: flips where the reference was sure."""
    result = _gate(varied_weights, converted, precision, transform=lambda b: b[:, ::-1].copy())
    assert not result.passes
    assert result.decided_flips > 0, result.table()


def test_bf16_refused_where_the_cpu_lacks_it(varied_weights, converted, monkeypatch):
    monkeypatch.setattr(openvino_backend, "cpu_capabilities", lambda core=None: ("FP32",))
    with pytest.raises(StartupError, match="does not compute it natively"):
        create_app(_settings(varied_weights, converted, PRECISION="bf16"))


def test_bf16_needs_openvino(varied_weights, converted):
    values = _settings(varied_weights, converted, PRECISION="bf16", BACKEND="onnxruntime")
    with pytest.raises(ConfigError, match="SEGSERVE_PRECISION=bf16 needs SEGSERVE_BACKEND"):
        Settings.from_mapping(values)


def test_refuses_an_artifact_of_other_weights(varied_weights, converted, tmp_path):
    other = tmp_path / "other.pth"
    w.save(w.init_payload("lraspp_mobilenet_v3_large", 1), other)
    with pytest.raises(w.WeightsError, match="was converted from weights sha256"):
        create_app({**_settings(varied_weights, converted), "WEIGHTS_PATH": str(other)})


@pytest.mark.parametrize("precision", ["fp32", *(["bf16"] if HAS_BF16 else [])])
@pytest.mark.parametrize("channels", ["RGB", "BGR"])
def test_the_recorded_reference_gives_the_live_verdict(
    varied_weights, converted, precision, channels
):
    """A host without torch gates against what the conversion recorded of eager PyTorch: the
    same flips, undecided and decided flips, pixel for pixel, as against eager itself, for a
    candidate that passes and for one that must fail."""
    transform = (lambda b: b) if channels == "RGB" else (lambda b: b[:, ::-1].copy())
    live = _gate(varied_weights, converted, precision, transform=transform)
    recorded = gate.evaluate_recorded(
        base64.b64decode(converted[3]["gate_reference"]),
        _openvino(converted, precision, transform=transform),
        precision=precision,
        input_size=INPUT_SIZE,
    )
    fields = ("name", "pixels", "flips", "undecided", "decided_flips", "classes")
    assert [[getattr(i, f) for f in fields] for i in recorded.images] == [
        [getattr(i, f) for f in fields] for i in live.images
    ]
    # The bounds come from eager's logits in two processes (the conversion's and this one),
    # whose float32 sums may differ in the last bits with the thread count.
    assert [i.bound for i in recorded.images] == pytest.approx([i.bound for i in live.images])
    assert recorded.passes == live.passes == (channels == "RGB"), recorded.table()


def test_the_recorded_reference_refuses_another_input_size(converted):
    with pytest.raises(ValueError, match="recorded at input size"):
        gate.evaluate_recorded(
            base64.b64decode(converted[3]["gate_reference"]),
            _openvino(converted, "fp32"),
            precision="fp32",
            input_size=INPUT_SIZE + 8,
        )
