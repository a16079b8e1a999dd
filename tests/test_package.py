import importlib
import subprocess
import sys


def test_top_level_packages_importable_from_anywhere(tmp_path):
    # from a foreign working directory, so the import proves the installed project, not the checkout on sys.path
    code = (
        "import vidiff, vidiff.data_prep, vidiff.evaluation, vidiff.models, vidiff.pipelines, vidiff.io; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
    importlib.import_module("vidiff.cli.edit")


def test_models_package_has_no_lightning():
    code = "import sys, vidiff.models, vidiff.pipelines; print(any(m.startswith(('lightning', 'pytorch_lightning')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_edit_help():
    out = subprocess.run(
        [sys.executable, "-m", "vidiff.cli.edit", "--help"], capture_output=True, text=True, check=True
    )
    assert "--instruction" in out.stdout and "--checkpoint" in out.stdout
