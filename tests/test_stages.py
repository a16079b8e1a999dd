"""Runs on a cluster: stages chain as written, a model's identity travels with it, a killed or signalled run resumes
by itself, and checkpoints hold only what trains."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vidiff.errors import VIDiffError
from vidiff.pipelines import load_model, save_model

from .test_train import _deterministic_data, compose_train, run_train, tiny_overrides


QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
ONE_STEP = [
    "trainer.max_steps=1",
    "trainer.limit_val_batches=0",
    "~logger",
    "callbacks.video_logger=null",
    "callbacks.lr_monitor=null",
]


def paper(stage: str, root: Path, shards: Path, *extra: str) -> list[str]:
    """A paper experiment as the README runs it on the tiny model (plus a CPU trainer and one step)."""
    out = root / "outputs" / f"{stage}" / "runs" / "r"
    return [f"experiment=paper/{stage}", "model=tiny", "data=tiny", "trainer=cpu", f"paths.root_dir={root}",
            f"paths.data_dir={shards}", f"paths.output_dir={out}", *QUIET, *ONE_STEP, *extra]  # fmt: skip


def save_stage2_model(root: Path, run: str, *overrides: str) -> Path:
    from vidiff.config import load_model_preset

    model_dir = root / "outputs" / "stage2_t2v" / "runs" / run / "model"
    save_model(load_model_preset("tiny", list(overrides)), model_dir)
    return model_dir


def test_paper_stages_chain_as_written(tiny_shards, tmp_path):
    """stage3 before stage2 is a one-line error naming the experiment to run; after stage2 finished, stage3 starts
    from it with no path on the command line."""
    with pytest.raises(VIDiffError, match=r"run `vidiff-train experiment=paper/stage2_t2v` first") as err:
        run_train(compose_train(paper("stage3_v2v", tmp_path, tiny_shards)))
    assert "\n" not in str(err.value)
    _, stage2 = run_train(compose_train(paper("stage2_t2v", tmp_path, tiny_shards)))
    exported = tmp_path / "outputs" / "stage2_t2v" / "runs" / "r" / "model"
    assert (exported / "model_index.json").is_file()
    _, stage3 = run_train(
        compose_train(paper("stage3_v2v", tmp_path, tiny_shards, f"paths.output_dir={tmp_path / 's3'}"))
    )
    assert stage3["module"].hparams.init_from == str(exported)
    assert stage2["trainer"].global_step == 1


def test_an_unfinished_previous_stage_says_so(tmp_path, tiny_shards):
    (tmp_path / "outputs" / "stage2_t2v" / "runs" / "x" / "checkpoints").mkdir(parents=True)
    with pytest.raises(VIDiffError, match=r"has not finished: start it again to resume it"):
        run_train(compose_train(paper("stage3_v2v", tmp_path, tiny_shards)))


X0 = [
    "model.noise_scheduler.prediction_type=sample",
    "model.noise_scheduler.rescale_betas_zero_snr=true",
    "model.noise_scheduler.timestep_spacing=trailing",
    "model.source_residual=true",
]


def test_identity_travels_with_the_model_and_contradictions_are_refused(tiny_shards, tmp_path, capsys):
    save_stage2_model(tmp_path, "a", *X0)
    _, objects = run_train(compose_train(paper("stage3_v2v", tmp_path, tiny_shards)))
    model = objects["module"].model
    assert model.noise_scheduler.config.prediction_type == "sample"
    assert model.noise_scheduler.config.timestep_spacing == "trailing"
    assert model.noise_scheduler.config.rescale_betas_zero_snr is True and model.source_residual is True
    # the stage's checkpoint records it, so a next stage started from the checkpoint file takes it as well
    last = tmp_path / "outputs" / "stage3_v2v" / "runs" / "r" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["identity"]["prediction_type"] == "sample"
    # a run that says otherwise is refused on one line naming both values ...
    with pytest.raises(VIDiffError) as err:
        run_train(compose_train(paper("stage3_v2v", tmp_path, tiny_shards, "model.noise_scheduler.prediction_type=epsilon",
                                      "model.source_residual=false")))  # fmt: skip
    message = str(err.value)
    assert "prediction_type=epsilon" in message and "prediction_type=sample" in message and "\n" not in message
    # ... unless it converts on purpose, which is printed
    capsys.readouterr()
    _, objects = run_train(
        compose_train(
            paper("stage3_v2v", tmp_path, tiny_shards, "model.noise_scheduler.prediction_type=epsilon",
                  "model.source_residual=false", "convert_identity=true", f"paths.output_dir={tmp_path / 'c'}")
        )
    )  # fmt: skip
    assert objects["module"].model.noise_scheduler.config.prediction_type == "epsilon"
    assert "converting stage.init_from's model" in capsys.readouterr().out


def test_demo_v2v_inherits_the_t2v_identity(tmp_path):
    """demo/v2v.yaml no longer repeats demo/t2v's block: the same model comes from the T2V model directory."""
    from vidiff.training.runs import apply_identity

    model_dir = save_stage2_model(tmp_path, "t2v", *X0)
    cfg = compose_train(["experiment=demo/v2v", f"stage.init_from={model_dir}", "paths.data_dir=/unused"])
    apply_identity(cfg.model, cfg.stage.init_from)
    t2v = compose_train(["experiment=demo/t2v", "paths.data_dir=/unused"])
    for key in ("prediction_type", "rescale_betas_zero_snr", "timestep_spacing"):
        assert cfg.model.noise_scheduler[key] == t2v.model.noise_scheduler[key]
    assert cfg.model.source_residual == t2v.model.source_residual is True


# ---------------------------------------------------------------------------------------------- preemption
def train_command(shards: Path, out: Path, *extra: str) -> list[str]:
    data = [o for o in _deterministic_data(shards) if not o.startswith("callbacks.model_checkpoint")]
    return [sys.executable, "-m", "vidiff.cli.train", "experiment=smoke", f"paths.data_dir={shards}",
            f"hydra.run.dir={out}", *QUIET, *data, *extra]  # fmt: skip


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    start = time.monotonic()
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path} appeared"
        assert time.monotonic() - start < timeout
        time.sleep(0.02)


def trained_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, weights_only=True)
    return {k: v for k, v in state["state_dict"].items() if k.startswith("model.")}


def test_a_killed_run_resumes_with_the_same_command(tiny_shards, tmp_path):
    """SIGKILL after the step-2 checkpoint; the same command again resumes from it (no flag) and ends with the
    weights of an uninterrupted run."""
    every = ["trainer.max_steps=6", "callbacks.model_checkpoint.every_n_train_steps=2"]
    command = train_command(tiny_shards, tmp_path / "run", *every)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(tmp_path / "run" / "checkpoints" / "step0000002.ckpt", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "run" / "checkpoints" / "step0000006.ckpt").exists()
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "vidiff-train: resuming from" in again.stdout, again.stdout[-2000:]
    # the uninterrupted run, in the same kind of process (Adam turns float noise on near-zero gradients into
    # lr-sized steps, so an in-process run with other thread pools is not a 1e-6 reference)
    reference = subprocess.run(train_command(tiny_shards, tmp_path / "ref", *every), capture_output=True, timeout=300)
    assert reference.returncode == 0, reference.stderr[-2000:]
    a = trained_weights(tmp_path / "run" / "checkpoints" / "last.ckpt")
    b = trained_weights(tmp_path / "ref" / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys() and a
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, worst


def test_a_signal_checkpoints_stops_and_the_run_resumes(tiny_shards, tmp_path):
    """SIGUSR2 (submitit's time-limit warning) mid-run: the step finishes, last.ckpt is written, the run stops without
    exporting a model; started again, it resumes from there and finishes."""
    command = train_command(tiny_shards, tmp_path / "run", "trainer.max_steps=400", "export_model=true",
                            "callbacks.model_checkpoint.every_n_train_steps=2")  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(tmp_path / "run" / "checkpoints" / "step0000002.ckpt", process)
    process.send_signal(signal.SIGUSR2)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    line = next(line for line in out.splitlines() if "SIGUSR2 at step" in line)
    step = int(line.split("at step ")[1].split(":")[0])
    assert 2 <= step < 400
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step
    assert not (tmp_path / "run" / "model").exists()
    again = subprocess.run([*command, f"trainer.max_steps={step + 2}"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from" in again.stdout and (tmp_path / "run" / "model" / "model_index.json").is_file()


def test_checkpoints_hold_what_trains_and_a_corrupt_last_falls_back(tiny_shards, tmp_path, capsys):
    out = tmp_path / "run"
    overrides = [*_deterministic_data(tiny_shards), "callbacks.model_checkpoint.every_n_train_steps=2",
                 "callbacks.model_checkpoint.save_top_k=2"]  # fmt: skip
    _, first = run_train(compose_train(tiny_overrides(tiny_shards, out, "trainer.max_steps=6", *overrides)))
    checkpoints = out / "checkpoints"
    # the newest two step checkpoints are kept; last is a link to the newest, not a second write
    assert sorted(p.name for p in checkpoints.glob("step*.ckpt")) == ["step0000004.ckpt", "step0000006.ckpt"]
    assert (checkpoints / "last.ckpt").resolve() == (checkpoints / "step0000006.ckpt").resolve()
    state = torch.load(checkpoints / "step0000006.ckpt", weights_only=True)["state_dict"]
    assert not [k for k in state if k.startswith(("model.vae.", "model.text_encoder.", "model.image_encoder."))]
    trainable = set(first["module"].trainable_state_dict())
    assert {k.removeprefix("model.") for k in state if k.startswith("model.")} == trainable
    # a truncated last.ckpt: the newest readable checkpoint, with a notice
    (checkpoints / "last.ckpt").unlink()
    data = (checkpoints / "step0000006.ckpt").read_bytes()
    (checkpoints / "step0000006.ckpt").write_bytes(data[: len(data) // 2])
    (checkpoints / "last.ckpt").symlink_to("step0000006.ckpt")
    capsys.readouterr()
    _, resumed = run_train(compose_train(tiny_overrides(tiny_shards, out, "trainer.max_steps=8", *overrides)))
    printed = capsys.readouterr().out
    assert "skipping" in printed and "last.ckpt: not a readable checkpoint" in printed
    assert f"resuming from {checkpoints / 'step0000004.ckpt'}" in printed
    assert resumed["trainer"].global_step == 8


def test_checkpoint_loading_maps_the_file(tmp_path, monkeypatch):
    """Resume reads a checkpoint through mmap (tensors paged in as they are copied, not read whole first)."""
    from vidiff.training.checkpoint_io import AtomicCheckpointIO

    io, calls, load = AtomicCheckpointIO(), [], torch.load
    io.save_checkpoint({"state_dict": {"w": torch.arange(1000.0)}}, tmp_path / "a.ckpt")
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or load(*a, **k))
    loaded = io.load_checkpoint(tmp_path / "a.ckpt")
    assert torch.equal(loaded["state_dict"]["w"], torch.arange(1000.0))
    assert calls == [{"map_location": "cpu", "weights_only": True, "mmap": True}]


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_the_signal_handler_chains_to_a_foreign_handler():
    """submitit's handler (which requeues the job) still runs when the callback takes the signal."""
    from vidiff.training.callbacks import PreemptionCheckpoint

    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    try:
        callback = PreemptionCheckpoint(signals=["SIGUSR2"])
        callback.on_train_start(None, None)
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.05)
        assert seen == [signal.SIGUSR2] and callback.received == signal.SIGUSR2
        callback.teardown(None, None, "fit")
    finally:
        signal.signal(signal.SIGUSR2, previous)


# ---------------------------------------------------------------------------------------------- stages as data
def weight_changes(before: dict[str, torch.Tensor], model_dir: Path) -> set[str]:
    """The parameters of an exported model directory that differ from ``before``."""

    after = load_model(model_dir).state_dict()
    assert after.keys() == before.keys()
    return {k for k in after if not torch.equal(before[k], after[k].to(before[k].dtype))}


def test_the_builtin_stages_are_their_config_files():
    """conf/stage/<name>.yaml spells out the fields a module built by name takes (one set of values, two doors)."""
    from vidiff.training.stage import STAGES, Stage

    for name, stage in STAGES.items():
        node = compose_train([f"stage={name}", "paths.data_dir=/unused"]).stage
        fields = {k: node[k] for k in ("trains", "source", "frames_per_sample", "export")}
        assert node.stage == name and Stage.of(name, **fields) == stage


def test_motion_only_stage_is_a_config_file_and_trains_only_motion_modules(tiny_shards, tmp_path):
    """paper/stage3_insv2v (conf/stage/v2v_motion.yaml, no code of its own): two steps move motion-module weights
    only (and the image projector's), and the exported directory loads as a VIDiff model."""
    from vidiff.config import load_model_preset
    from vidiff.models.unet import is_temporal_parameter

    before = load_model_preset("tiny").state_dict()
    # the paper recipe's frozen_dtype (bf16 encoders while training): the export still holds the encoders exactly
    # as they were, not bf16-rounded copies (every changed name below must be a trained one)
    overrides = ["trainer.max_steps=2", "stage.warmup_steps=0", "stage.lr=1e-3", "stage.ema_decay=null",
                 "stage.gradient_checkpointing=false"]  # fmt: skip
    cfg = compose_train(paper("stage3_insv2v", tmp_path, tiny_shards, *overrides))
    assert cfg.stage.frozen_dtype == "bfloat16"
    assert cfg.stage.stage == "v2v_motion" and list(cfg.stage.trains) == ["unet.motion", "image_projector"]
    _, objects = run_train(cfg)
    trained = {n for n, p in objects["module"].model.named_parameters() if p.requires_grad}
    assert trained and all(is_temporal_parameter(n) or n.startswith("image_projector.") for n in trained)
    changed = weight_changes(before, tmp_path / "outputs" / "stage3_insv2v" / "runs" / "r" / "model")
    motion = {n for n in changed if n.startswith("unet.") and is_temporal_parameter(n)}
    assert motion and changed - motion <= {n for n in changed if n.startswith("image_projector.")}


def test_a_new_stage_is_defined_by_config_alone(tiny_shards, tmp_path, monkeypatch):
    """An image-editing stage no file or code names (a source, one frame per sample, the spatial U-Net training),
    composed from overrides: it trains what it says on what it says, and exports a loadable model."""
    from vidiff.config import load_model_preset
    from vidiff.models import VIDiffModel
    from vidiff.models.unet import is_temporal_parameter

    frames_seen = []
    predict = VIDiffModel.predict_noise

    def predict_noise(self, noisy, source, *args, **kwargs):
        frames_seen.append((noisy.shape[2], bool(source.abs().sum() > 0)))
        return predict(self, noisy, source, *args, **kwargs)

    monkeypatch.setattr(VIDiffModel, "predict_noise", predict_noise)
    before = load_model_preset("tiny").state_dict()
    out = tmp_path / "run"
    stage = ["stage.stage=i2i_edit", "stage.trains=[unet.spatial]", "stage.source=true", "stage.frames_per_sample=1",
             "stage.export.ema=false", "stage.cond_dropout.source_only=0", "stage.cond_dropout.both=0"]  # fmt: skip
    cfg = compose_train(
        [*tiny_overrides(tiny_shards, out), *QUIET, *ONE_STEP, "trainer.max_steps=2", "stage.warmup_steps=0", *stage]
    )
    _, objects = run_train(cfg)
    module = objects["module"]
    assert (module.stage.name, module.stage.trains, module.stage.source) == ("i2i_edit", ("unet.spatial",), True)
    assert frames_seen and all(f == 1 for f, _ in frames_seen) and any(has_source for _, has_source in frames_seen)
    changed = weight_changes(before, out / "model")
    assert changed and all(n.startswith("unet.") and not is_temporal_parameter(n) for n in changed)
    # export.ema=false: the directory holds the last trained weights (the smoke experiment keeps an EMA)
    assert module.ema is not None
    exported = load_model(out / "model").state_dict()
    trained = module.trainable_state_dict()
    assert all(torch.equal(exported[k], trained[k]) for k in trained)


def test_no_training_module_branches_on_a_stage_name():
    """Stage behaviour is the stage's fields: nothing in vidiff.training compares ``stage`` with a string."""
    import ast

    import vidiff.training

    found = []
    for path in Path(vidiff.training.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                names = [n for n in [node.left, *node.comparators] if "stage" in ast.unparse(n).split(".")[-1]]
                strings = [n for n in [node.left, *node.comparators] if isinstance(n, ast.Constant | ast.Tuple)]
                if names and strings:
                    found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert not found, found
