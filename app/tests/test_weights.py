from __future__ import annotations

import logging

import pytest
import torch

from segserve import create_app
from segserve import weights as w
from segserve.errors import StartupError


def test_init_is_deterministic_for_a_seed(tmp_path, weights_sha):
    again = w.save(w.init_payload("lraspp_mobilenet_v3_large", 0), tmp_path / "a.pth")
    other = w.save(w.init_payload("lraspp_mobilenet_v3_large", 1), tmp_path / "b.pth")
    assert again == weights_sha
    assert other != weights_sha


def test_init_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    w.init_payload("lraspp_mobilenet_v3_large", 0)
    assert torch.equal(torch.rand(3), expected)


def test_load_reports_metadata(weights_file, weights_sha):
    loaded = w.load(
        weights_file, expected_sha256=weights_sha.upper(), expected_arch="lraspp_mobilenet_v3_large"
    )
    assert loaded.sha256 == weights_sha
    assert loaded.pretrained is False and loaded.seed == 0
    assert loaded.categories[15] == "person" and loaded.num_classes == 21


def test_sha256_mismatch_refuses_to_start(settings, caplog):
    wrong = "0" * 64
    with caplog.at_level(logging.ERROR, logger="segserve"), pytest.raises(StartupError):
        create_app({**settings, "WEIGHTS_SHA256": wrong})
    line = next(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert line.startswith("refusing to start: weights sha256 mismatch: file ")
    assert f"expected {wrong}" in line


def test_arch_mismatch_refuses_to_start(settings):
    with pytest.raises(StartupError, match="weights arch mismatch.*deeplabv3_mobilenet_v3_large"):
        create_app({**settings, "ARCH": "deeplabv3_mobilenet_v3_large"})


def test_missing_file(tmp_path):
    with pytest.raises(w.WeightsError, match="weights file not found: .*nope.pth"):
        w.load(tmp_path / "nope.pth")


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a zip archive at all")
    with pytest.raises(w.WeightsError, match="cannot load weights file"):
        w.load(path)


def test_plain_state_dict_is_not_a_weights_file(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(w.WeightsError, match="not a segserve weights file"):
        w.load(path)


class Payload:
    """Anything but plain containers and tensors must be refused by weights_only."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"format": w.FORMAT, "obj": Payload()}, path)
    with pytest.raises(w.WeightsError, match="cannot load weights file"):
        w.load(path)


def test_weights_not_matching_the_network(tmp_path, settings):
    payload = w.init_payload("lraspp_mobilenet_v3_large", 0)
    payload["state_dict"].pop(next(iter(payload["state_dict"])))
    path = tmp_path / "partial.pth"
    w.save(payload, path)
    with pytest.raises(StartupError, match="Missing key"):
        create_app({**settings, "WEIGHTS_PATH": str(path)})


def test_deeplab_serves(tmp_path, settings):
    path = tmp_path / "deeplab.pth"
    w.save(w.init_payload("deeplabv3_mobilenet_v3_large", 0), path)
    app = create_app(
        {
            **settings,
            "WEIGHTS_PATH": str(path),
            "INPUT_SIZE": 64,
            "ARCH": "deeplabv3_mobilenet_v3_large",
        }
    )
    assert app.test_client().get("/v1/model").get_json()["arch"] == "deeplabv3_mobilenet_v3_large"
