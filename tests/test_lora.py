"""LoRA stage: adapters train, the export merges them, and the loaded model computes what the trained module does."""

from __future__ import annotations

import pytest
import torch

from vidiff.config import compose_config, load_model_preset
from vidiff.models import VIDiffModel
from vidiff.pipelines import load_model
from vidiff.training.lora import merged
from vidiff.training.module import VIDiffModule
from vidiff.training.plan import synthetic_batch


pytestmark = pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")


def predict(model: VIDiffModel, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noisy, source = torch.randn(1, 4, 2, 8, 8, generator=g), torch.randn(1, 4, 2, 8, 8, generator=g)
    with torch.no_grad():
        instruction = model.encode_instruction(["make it red"])
        return model.predict_noise(noisy, source, torch.tensor([500]), instruction)


def test_lora_trains_exports_merged_and_loads(tmp_path):
    cfg = compose_config("plan", ["experiment=smoke"])
    module = VIDiffModule(
        load_model_preset("tiny"),
        stage="v2v",
        ema_decay=None,
        lr=1e-2,
        lora={"rank": 4, "targets": ["spatial", "motion"]},
    )
    trained = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert any("motion_modules" in n for n in trained) and any("attentions" in n for n in trained)
    assert all(".lora_" in n or n.startswith("image_projector.") for n in trained)
    base = predict(load_model_preset("tiny"))
    assert torch.allclose(predict(module.model), base, atol=1e-6)  # zero-initialised up-projections
    optimizer = module.configure_optimizers()["optimizer"]
    module.train(True)
    for step in range(3):
        batch = synthetic_batch(cfg, module, 1)
        batch["target"] = torch.randint(
            0, 256, batch["target"].shape, generator=torch.Generator().manual_seed(step), dtype=torch.uint8
        )
        module.training_step(batch, step).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    module.eval()
    module.export(tmp_path / "model")  # the stage's export merges the adapters
    loaded = load_model(tmp_path / "model")
    assert not any(".lora_" in n for n, _ in loaded.named_parameters())
    out_trained, out_loaded = predict(module.model), predict(loaded)
    assert (out_loaded - base).abs().max() > 1e-4
    assert torch.allclose(out_loaded, out_trained, atol=1e-5)


def test_merged_lora_keeps_what_the_model_is(tiny_model):
    """A LoRA trained on InstructPix2Pix weights must export with their unscaled-source convention."""
    from vidiff.config import load_model_preset
    from vidiff.training.lora import add_lora

    model = load_model_preset("tiny")
    model.conditioning, model.reference_frames = "unscaled", ()
    add_lora(model, {"rank": 2, "targets": ["spatial"]})
    exported = merged(model)
    assert (exported.conditioning, exported.reference_frames) == ("unscaled", ())
