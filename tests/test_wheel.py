"""The wheel works outside the checkout: built from the tracked files, installed into a fresh environment that
reuses this environment's dependencies (no torch download) but not the editable install, and run from a foreign
directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]


def run(cmd, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(bin folder, environment)`` of a fresh venv holding the vidiff wheel and nothing of the checkout."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git checkout to know the tracked files")
    root = tmp_path_factory.mktemp("wheel")
    # the sources as a fresh clone would have them: tracked files and new files not yet committed, nothing ignored
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], REPO).stdout.split()
    source = root / "source"
    for name in files:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    dist = root / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, source], root)
    wheels = list(dist.glob("vidiff-*.whl"))
    assert len(wheels) == 1
    env_dir = root / "env"
    venv.create(env_dir, with_pip=False)
    site = Path(
        sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)})
    )  # the new environment's site-packages
    # this environment's dependencies as a plain path entry: its .pth files (the editable vidiff) are not processed
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    # `pip install vidiff` without extras: the extras' packages exist in the shared path but cannot be imported here
    (site / "no_extras.pth").write_text("import sys; sys.modules.update(gradio=None, wandb=None)\n")
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    # the new environment's own python runs pip (found through deps.pth), so the console scripts point at it
    run([bin_dir / "python", "-m", "pip", "install", "--no-deps", "-q", wheels[0]], root)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIDIFF_CONF_DIR")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return bin_dir, env, root


def test_only_the_vidiff_namespace_is_installed(installed):
    bin_dir, env, root = installed
    code = (
        "import importlib.util, vidiff, vidiff.evaluation, vidiff.data_prep, vidiff.cli.train;"
        "print(vidiff.__file__);"
        "print([n for n in ('evaluation', 'data_prep', 'conf') if importlib.util.find_spec(n)])"
    )
    out = run([bin_dir / "python", "-c", code], root, env).stdout.splitlines()
    assert str(root / "env") in out[0] and str(REPO) not in out[0]
    assert out[1] == "[]"


def test_wheel_commands_run_from_a_foreign_directory(installed, bikes_path, tmp_path):
    bin_dir, env, _ = installed
    foreign = tmp_path / "elsewhere"
    foreign.mkdir()
    job = run([bin_dir / "vidiff-train", "--cfg", "job", "experiment=smoke"], foreign, env).stdout
    assert "vidiff.training.module.VIDiffModule" in job and "max_steps: 20" in job

    copy = foreign / "copy.mp4"
    shutil.copy(bikes_path, copy)
    scores = run(
        [bin_dir / "vidiff-score", bikes_path, copy, "--metrics", "psnr,niqe", "--frames", "4", "--json"], foreign, env
    ).stdout
    import json

    values = json.loads(scores)
    assert values["psnr"] == 100.0 and 0 < values["niqe"] < 100  # NIQE's parameters shipped with the wheel

    out = foreign / "edited.mp4"
    edit = [bin_dir / "vidiff-edit", bikes_path, "-o", out, "-i", "Remove the haze.", "--model", "tiny"]
    result = run([*edit, "--frames", "4", "--steps", "1", "--size", "32", "--quiet"], foreign, env)
    assert result.stderr.strip() == ""
    from vidiff.io import probe_video

    assert probe_video(out).num_frames == 4


def test_core_wheel_has_no_extras_and_says_which_to_install(installed, tmp_path):
    """The core wheel edits (above) without gradio and W&B; what needs them says which extra to install."""
    bin_dir, env, _ = installed
    code = "import importlib.metadata as m; print('\\n'.join(m.requires('vidiff')))"
    requires = run([bin_dir / "python", "-c", code], tmp_path, env).stdout.splitlines()
    for package, extra in (("gradio", "app"), ("wandb", "wandb")):
        needed = [r for r in requires if r.split(">")[0].split(";")[0].strip() == package]
        assert needed and all(f'extra == "{extra}"' in r for r in needed), needed
    app = subprocess.run([bin_dir / "vidiff-app", "--model", "tiny"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert app.returncode == 2
    assert (
        app.stderr.strip()
        == "vidiff-app: error: vidiff-app needs gradio, which is not installed: pip install 'vidiff[app]'"
    )
