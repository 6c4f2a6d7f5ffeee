from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error

import pytest
import torch

from segserve import weights as w
from segserve import weights_cli
from segserve.models import build_model


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "segserve-weights"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_init_prints_the_sha256(tmp_path, weights_sha):
    out = tmp_path / "sub" / "w.pth"
    result = run_cli("init", "--arch", "lraspp_mobilenet_v3_large", "--seed", "0", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == weights_sha + "\n"
    assert w.file_sha256(out) == weights_sha
    assert "UNTRAINED" in result.stderr


def test_info(capsys, weights_file, weights_sha):
    assert weights_cli.main(["info", str(weights_file)]) == 0
    out = capsys.readouterr().out
    assert "pretrained: False" in out and "WARNING: untrained" in out
    assert out.splitlines()[-1] == f"sha256: {weights_sha}"
    assert weights_cli.main(["info", "--json", str(weights_file)]) == 0
    assert json.loads(capsys.readouterr().out)["arch"] == "lraspp_mobilenet_v3_large"


def test_info_on_a_missing_file_is_one_line(capsys, tmp_path):
    assert weights_cli.main(["info", str(tmp_path / "none.pth")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("segserve-weights: error: weights file not found")
    assert len(err.strip().splitlines()) == 1


def test_export_offline_fails_cleanly(capsys, tmp_path, monkeypatch):
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    from torchvision.models._api import WeightsEnum

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    assert weights_cli.main(["export", str(tmp_path / "p.pth")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("segserve-weights: error: cannot download https://")
    assert len(captured.err.strip().splitlines()) == 1
    assert not (tmp_path / "p.pth").exists()


def test_export_for_real_has_no_traceback(tmp_path):
    # Here the model hub is unreachable, so this fails; where it is reachable it writes a
    # pretrained file. Either way: no traceback, and stdout is only the sha256 on success.
    out = tmp_path / "p.pth"
    result = run_cli("export", str(out), TORCH_HOME=str(tmp_path / "torch"))
    assert "Traceback" not in result.stderr
    if result.returncode == 0:
        assert result.stdout.strip() == w.file_sha256(out)
        assert w.load(out).pretrained
    else:
        assert result.stdout == ""
        assert len(result.stderr.strip().splitlines()) == 1


def test_export_from_a_local_file(tmp_path, capsys):
    # Shaped like torchvision's published checkpoint (a bare state_dict).
    source = tmp_path / "lraspp_mobilenet_v3_large-d234d4ea.pth"
    torch.save(build_model("lraspp_mobilenet_v3_large").state_dict(), source)
    out = tmp_path / "exported.pth"
    assert weights_cli.main(["export", "--from-file", str(source), str(out)]) == 0
    assert capsys.readouterr().out.strip() == w.file_sha256(out)
    loaded = w.load(out)
    assert loaded.pretrained is True
    assert loaded.source.startswith("torchvision:LRASPP_MobileNet_V3_Large_Weights.")


def test_export_from_a_wrong_file(tmp_path, capsys):
    source = tmp_path / "deeplab.pth"
    torch.save(build_model("deeplabv3_mobilenet_v3_large").state_dict(), source)
    assert weights_cli.main(["export", "--from-file", str(source), str(tmp_path / "x.pth")]) == 1
    err = capsys.readouterr().err
    assert "do not fit lraspp_mobilenet_v3_large" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--threshold", "1.5", "above 0 and at most 1"),
        ("--threshold", "-1", "above 0 and at most 1"),
        ("--threshold", "0", "above 0 and at most 1"),
        ("--threshold", "high", "not a number"),
        ("--input-size", "0", "between 16 and 4096"),
        ("--input-size", "9000", "between 16 and 4096"),
        ("--threads", "0", "between 1 and 256"),
    ],
)
def test_export_onnx_refuses_bad_flags_before_converting(
    capsys, tmp_path, weights_file, flag, value, says
):
    out = tmp_path / "m.onnx"
    with pytest.raises(SystemExit) as exit_info:
        weights_cli.main(["export-onnx", flag, value, str(weights_file), str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and says in err
    assert not out.exists()
