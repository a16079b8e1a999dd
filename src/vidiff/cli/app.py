"""``vidiff-app``: a local web page to edit videos with instructions (see :mod:`vidiff.app`)."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from vidiff.cli.common import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidiff-app",
        description=(
            "Serve a local web page to edit videos with text and/or image instructions: upload a video or pick an "
            "example clip, choose a task preset, sampler and guidance scales, watch the progress per clip and step, "
            "and download the edited video, a side-by-side video and (segmentation) the masks. Offline: no "
            "analytics, no share links, nothing fetched from the internet."
        ),
        epilog="example: vidiff-app --checkpoint outputs/train/runs/<run>/model --port 7860",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", default=None, help="VIDiff model directory (as exported by vidiff-train)")
    source.add_argument("--model", default=None, help="model preset (default: tiny, random weights)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto (default)")
    parser.add_argument("--max-mb", type=float, default=200, help="largest upload in MiB (default: 200)")
    parser.add_argument("--max-frames", type=int, default=2000, help="most frames an edit may have (default: 2000)")
    parser.add_argument(
        "--max-pixels", type=int, default=1920 * 1080, help="most pixels per frame of an upload (default: 1920x1080)"
    )
    return parser


@run_cli("vidiff-app")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # everything the app and Gradio write goes under one folder, removed when the app stops
    root = Path(tempfile.mkdtemp(prefix="vidiff-app-"))
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "torchinductor"))  # torch makes it on import

    def stop(signum, frame):  # SIGTERM ends the app like Ctrl-C, so the folder is removed
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        from vidiff.utils.extras import require

        # imported only now: gradio fixes its temporary folder from the environment when it is imported
        require("gradio", "vidiff-app")
        from vidiff.app import EditService, serve

        service = EditService.load(
            args.checkpoint,
            args.model,
            root / "work",
            args.device,
            max_bytes=int(args.max_mb * 2**20),
            max_frames=args.max_frames,
            max_pixels=args.max_pixels,
        )
        print(f"vidiff-app: serving on http://{args.host}:{args.port} (Ctrl-C stops it)", file=sys.stderr, flush=True)
        serve(service, args.host, args.port, block=True)
    except KeyboardInterrupt:
        print("vidiff-app: stopped", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
