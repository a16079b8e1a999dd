"""Model directories saved by earlier VIDiff versions load and edit exactly as they did.

``tests/fixtures/model_format1/`` was written by the format-1 code (commit 6eaf0d2, before the conditioning convention
was recorded) together with what editing a fixed clip gave (``model_format1_edit.npz``); see
``tests/fixtures/make_model_format1.py``. ``tests/fixtures/model_format2/`` was written by the format-2 code (commit
8ffae04, the last before the diffusers ``DiffusionPipeline`` format 3), with the model's identity away from every
default; see ``tests/fixtures/make_model_format2.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.make_model_format1 import edit
from vidiff.errors import ModelLoadError
from vidiff.pipelines import load_model, save_model
from vidiff.pipelines.vidiff_pipeline import FORMAT_VERSION


FIXTURES = Path(__file__).parent / "fixtures"

# float32 on another CPU may round differently; a changed convention moves frames by far more (asserted below)
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def format1():
    recorded = np.load(FIXTURES / "model_format1_edit.npz")
    return load_model(FIXTURES / "model_format1"), recorded["source"], recorded["frames"]


def test_format1_directory_edits_as_it_did(format1):
    model, source, frames = format1
    assert json.loads((FIXTURES / "model_format1" / "model_index.json").read_text())["format_version"] == 1
    assert model.conditioning == "scaled"  # what every format-1 model was trained with
    assert np.abs(edit(model, source) - frames).max() <= TOLERANCE
    # the fixture can tell conventions apart: the other one lands far outside the tolerance
    model.conditioning = "unscaled"
    try:
        assert np.abs(edit(model, source) - frames).max() > 100 * TOLERANCE
    finally:
        model.conditioning = "scaled"


def test_format1_directory_resaved_in_the_current_format(format1, tmp_path):
    model, source, frames = format1
    saved = save_model(model, tmp_path / "model")
    index = json.loads((saved / "model_index.json").read_text())
    assert index["format_version"] == FORMAT_VERSION and index["conditioning"] == "scaled"
    assert np.abs(edit(load_model(saved), source) - frames).max() <= TOLERANCE


def test_unknown_conditioning_is_one_line_error(format1, tmp_path):
    model, _, _ = format1
    saved = save_model(model, tmp_path / "model")
    index = json.loads((saved / "model_index.json").read_text())
    (saved / "model_index.json").write_text(json.dumps({**index, "conditioning": "sideways"}))
    with pytest.raises(ModelLoadError, match="conditioning must be one of scaled, unscaled, not 'sideways'") as err:
        load_model(saved)
    assert "\n" not in str(err.value)


def test_every_caller_passes_scaled_latents_and_the_model_converts(format1):
    """Training, cached latents and the samplers all hand ``predict_noise`` scaled source latents; what reaches the
    U-Net follows the model's convention."""
    import torch

    model, _, _ = format1
    seen = []
    hook = model.unet.conv_in.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, 4:].clone()))
    noisy, source = torch.randn(1, 4, 2, 4, 4), torch.randn(1, 4, 2, 4, 4)
    instruction = model.encode_instruction(["Remove the haze."])
    try:
        for conditioning in ("scaled", "unscaled"):
            model.conditioning = conditioning
            with torch.no_grad():
                model.predict_noise(noisy, source, torch.tensor([500]), instruction)
    finally:
        model.conditioning = "scaled"
        hook.remove()
    frames = lambda latents: latents.permute(0, 2, 1, 3, 4).flatten(0, 1)  # noqa: E731 - [b, c, f, h, w] -> [(b f), c, h, w]
    assert torch.equal(seen[0], frames(source))
    assert torch.allclose(seen[1], frames(source) / model.vae.config.scaling_factor)


@pytest.fixture(scope="module")
def format2():
    recorded = np.load(FIXTURES / "model_format2_edit.npz")
    return FIXTURES / "model_format2", recorded["source"], recorded["frames"]


def test_format2_directory_keeps_its_identity_and_edits_as_it_did(format2):
    from tests.fixtures.make_model_format2 import IDENTITY

    path, source, frames = format2
    assert json.loads((path / "model_index.json").read_text())["format_version"] == 2
    model = load_model(path)
    assert (model.source_residual, model.conditioning, tuple(model.reference_frames)) == (True, "unscaled", (0, 2))
    assert {key: model.noise_scheduler.config[key] for key in IDENTITY} == IDENTITY
    assert np.abs(edit(model, source) - frames).max() <= TOLERANCE
    # the fixture tells each recorded field apart: read with a default instead, the frames land far away
    for field, default in (("conditioning", "scaled"), ("source_residual", False)):
        setattr(model, field, default)
        assert np.abs(edit(model, source) - frames).max() > 100 * TOLERANCE, field
        model = load_model(path)
    # diffusers' loader path (VIDiffPipeline.from_pretrained) reads the old index the same way
    from vidiff.pipelines import VIDiffPipeline

    pipe = VIDiffPipeline.from_pretrained(path)
    assert pipe.config.source_residual is True and pipe.config.conditioning == "unscaled"
    assert np.abs(edit(pipe.model, source) - frames).max() <= TOLERANCE


def test_format2_directory_resaved_in_the_current_format(format2, tmp_path):
    from vidiff.pipelines import record_sampling

    path, source, frames = format2
    with pytest.raises(ModelLoadError, match="model_format2: sampling settings need a format-3 model"):
        record_sampling(path, {"num_inference_steps": 8})
    saved = save_model(load_model(path), tmp_path / "model")
    index = json.loads((saved / "model_index.json").read_text())
    assert index["format_version"] == FORMAT_VERSION and index["_class_name"] == "VIDiffPipeline"
    assert (index["source_residual"], index["conditioning"], index["reference_frames"]) == (True, "unscaled", [0, 2])
    record_sampling(saved, {"num_inference_steps": 8})
    assert np.abs(edit(load_model(saved), source) - frames).max() <= TOLERANCE
