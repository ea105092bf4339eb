"""hsivar.perceptual: pyiqa's classical metrics agree with ours, missing weights never reach the network."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hsivar import perceptual as P
from hsivar.metrics import psnr
from hsivar.render import false_colour


def pair(shape: tuple[int, int, int], seed: int, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(restored, clean) float32 cubes: clean uniform in [0, 1], restored = clean + Gaussian noise."""
    r = np.random.default_rng(seed)
    clean = r.random(shape).astype(np.float32)
    return (clean + noise * r.standard_normal(shape)).astype(np.float32), clean


def test_pyiqa_classical_metrics_agree() -> None:
    import pyiqa

    restored, clean = pair((31, 32, 32), 8, noise=0.05)
    fr, fc = false_colour(restored), false_colour(clean)
    # pyiqa's PSNR pools the channels of one image; one band replicated to RGB per image gives
    # per-band PSNR, which must equal ours on the same rendering.
    metric = pyiqa.create_metric("psnr", device="cpu")
    per_band = metric(
        torch.from_numpy(fr)[:, None].expand(3, 3, 32, 32), torch.from_numpy(fc)[:, None].expand(3, 3, 32, 32)
    )
    np.testing.assert_allclose(per_band.numpy(), psnr(fr, fc, per_band=True)[0], atol=1e-3)

    res = P.perceptual_metrics(restored, clean, None, names=("psnr", "ssim"))
    joint = 10 * np.log10(1 / np.mean((fr.astype(np.float64) - fc) ** 2))
    assert res["psnr"].value == pytest.approx(joint, abs=1e-3) and res["psnr"].reason is None
    assert 0 < res["ssim"].value < 1 and not res["ssim"].lower_better
    big, _ = pair((3, 176, 176), 9)  # MS-SSIM's 5 scales need >= 161 px
    same = P.perceptual_metrics(big, big, names=("ms_ssim", "ssim"))
    assert same["ms_ssim"].value == pytest.approx(1.0, abs=1e-4)
    assert same["ssim"].value == pytest.approx(1.0, abs=1e-4)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_perceptual_unavailable_names_files_without_pyiqa_or_network(tmp_path: Path, no_network,
                                                                      monkeypatch) -> None:
    # Missing weights are reported from a local file lookup alone: pyiqa must not even be imported
    # (a None entry in sys.modules makes `import pyiqa` raise) and no socket may open.
    monkeypatch.setitem(sys.modules, "pyiqa", None)
    restored, clean = pair((31, 32, 32), 10)
    res = P.perceptual_metrics(restored, clean, np.arange(400, 701, 10.0), weights_dir=tmp_path)
    assert set(res) == set(P.PERCEPTUAL_METRICS)
    expect = {
        "lpips": "LPIPS_v0.1_alex-df73285e.pth",
        "dists": "DISTS_weights-f5e65c96.pth",
        "clipiqa": "RN50.pt",
        "musiq": "musiq_koniq_ckpt-e95806b9.pth",
        "maniqa": "ckpt_koniq10k.pt",
    }
    for name, r in res.items():
        assert r.value is None and not r.available
        assert r.reason.startswith(f"{name} unavailable: weight file(s) not found locally")
        assert expect[name] in r.reason and str(tmp_path) in r.reason
    assert str(tmp_path / "checkpoints" / "vgg16-397923af.pth") in res["dists"].reason
    assert res["lpips"].lower_better and not res["musiq"].lower_better
    assert P.required_weight_files("musiq", tmp_path) == [str(tmp_path / "pyiqa/musiq_koniq_ckpt-e95806b9.pth")]
    with pytest.raises(ValueError, match="unsupported"):
        P.perceptual_metrics(restored, clean, names=("niqe_xyz",))


def test_perceptual_uses_weights_dir_without_download(tmp_path: Path, no_network) -> None:
    # A present-but-corrupt file is loaded from weights_dir (not downloaded) and reported as a failure.
    (tmp_path / "pyiqa").mkdir()
    (tmp_path / "pyiqa" / "musiq_koniq_ckpt-e95806b9.pth").write_bytes(b"not a checkpoint")
    restored, clean = pair((3, 32, 32), 11)
    r = P.perceptual_metrics(restored, clean, names=("musiq",), weights_dir=tmp_path)["musiq"]
    assert r.value is None and r.reason.startswith("musiq failed")
    assert "network" not in r.reason
    assert torch.hub.get_dir() != str(tmp_path)  # redirection undone


def test_perceptual_without_pyiqa_gives_a_reason(tmp_path: Path, no_network, monkeypatch) -> None:
    (tmp_path / "pyiqa").mkdir()
    (tmp_path / "pyiqa" / "musiq_koniq_ckpt-e95806b9.pth").write_bytes(b"present")
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # as if not installed
    restored, clean = pair((3, 32, 32), 12)
    r = P.perceptual_metrics(restored, clean, names=("musiq",), weights_dir=tmp_path)["musiq"]
    assert r.value is None and r.reason == "musiq unavailable: pyiqa is not installed (pip install 'hsivar[iqa]')"
