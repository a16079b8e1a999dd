"""The README's picture of ``vidiff-app``: the model ``make demo`` trained, on a degraded clip, as a user sees it.

Starts ``vidiff-app --checkpoint <demo>/runs/v2v/model``, opens it in Debian's chromium (Playwright), uploads the
hazy held-out clip the demo wrote (``<demo>/long/dehaze/source.mp4``), picks the dehaze preset (which also sets the
sampler the model records for dehaze), edits, and saves a screenshot with the result::

    .venv/bin/python benchmarks/app_screenshot.py --demo outputs/demo --out docs/vidiff-app.png
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("outputs/demo"), help="make demo's output folder")
    parser.add_argument("--task", default="dehaze", help="the demo's degraded clip and the preset to use")
    parser.add_argument("--frames", type=int, default=32, help="frames to edit (default: 32)")
    parser.add_argument("--out", type=Path, default=Path("docs/vidiff-app.png"))
    args = parser.parse_args()
    model, clip = args.demo / "runs" / "v2v" / "model", args.demo / "long" / args.task / "source.mp4"
    for path in (model, clip):
        if not path.exists():
            sys.exit(f"app_screenshot: {path} not found (run make demo first)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("app_screenshot: needs Debian's chromium (make install-browser)")
    from playwright.sync_api import sync_playwright

    port = free_port()
    cmd = [sys.executable, "-m", "vidiff.cli.app", "--checkpoint", str(model), "--port", str(port)]
    with tempfile.TemporaryDirectory() as temp:
        proc = subprocess.Popen(cmd, env={"TMPDIR": temp, "PATH": "/usr/bin:/bin"}, stdout=subprocess.DEVNULL)
        try:
            deadline = time.time() + 180
            while time.time() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.5)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_selector("#edit", timeout=60_000)
                page.locator("#input-video input[type='file']").set_input_files(str(clip))
                page.locator("#preset input").first.click()
                page.get_by_role("option", name=args.task, exact=True).click()
                page.get_by_text("Sampling").click()
                page.locator("#max-frames input").fill(str(args.frames))
                page.locator("#edit").click()
                page.wait_for_function(
                    "() => { const v = document.querySelector('#side-video video'); return v && v.duration > 0 }",
                    timeout=600_000,
                )
                # show a frame from the middle of the side-by-side video
                page.evaluate("const v = document.querySelector('#side-video video'); v.currentTime = v.duration / 2")
                page.wait_for_timeout(1500)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
                browser.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    print(f"app_screenshot: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
