"""Bounded host memory: shuffle buffers sized from ``data.shuffle_buffer_mib``, and a resume that finds its place
from shard sizes (skipping tar members unread) instead of re-reading the stream, replaying it exactly."""

from __future__ import annotations

import json
import logging
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from vidiff.data import MultiTaskDataModule
from vidiff.data.mixing import TaskSchedule, TaskScheduledMix, TaskStream
from vidiff.data.shards import count_samples, tar_samples
from vidiff.errors import VIDiffError


COUNTS = (5, 7, 3, 8, 6)  # uneven shards: a sample's place is not a multiple of one shard size
PAYLOAD = 1000  # bytes of the `bin` member of every sample


def write_shards(folder: Path, counts=COUNTS, sizes_json: bool = True) -> list[str]:
    """Raw (undecoded) shards of two-member samples keyed ``s<shard>-<index>``, with prep's ``sizes.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    urls = []
    for shard, count in enumerate(counts):
        path = folder / f"synth-train-{shard:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(count):
                sink.write({"__key__": f"s{shard}-{i:03d}", "txt": f"{shard}/{i}", "bin": bytes(PAYLOAD)})
        urls.append(str(path))
    if sizes_json:
        (folder / "sizes.json").write_text(json.dumps({Path(u).name: c for u, c in zip(urls, counts)}))
    return urls


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return write_shards(tmp_path_factory.mktemp("synth"))


def keys(batches) -> list[list[str]]:
    return [[s["__key__"] for s in batch] for batch in batches]


def take(iterator, n: int) -> list:
    return [b for _, b in zip(range(n), iterator)]


@pytest.fixture
def tar_reads(monkeypatch) -> list[str]:
    """Names of the tar members whose bytes were read (every reader goes through ``TarFile.extractfile``)."""
    read: list[str] = []
    original = tarfile.TarFile.extractfile

    def extractfile(self, member):
        read.append(getattr(member, "name", str(member)))
        return original(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", extractfile)
    return read


@pytest.mark.parametrize("sizes_json", [True, False], ids=["sizes.json", "tar-headers"])
def test_resumed_stream_replays_the_exact_batches(tmp_path, sizes_json):
    urls = write_shards(tmp_path / "s", sizes_json=sizes_json)
    stream = TaskStream("dehaze", urls, batch_size=3, shuffle_buffer=6, seed=11)
    full = keys(take(stream.iterate(rank=1, worker=1), 40))
    assert len({k for b in full for k in b}) == sum(COUNTS)  # every sample of every shard comes round
    assert [k for b in full for k in b][:6] != sorted([k for b in full for k in b][:6])  # shuffled
    for start in (1, 4, 13, 39):
        resumed = TaskStream("dehaze", urls, batch_size=3, shuffle_buffer=6, seed=11)
        assert keys(take(resumed.iterate(rank=1, worker=1, start=start), 40 - start)) == full[start:], start
    other = keys(take(TaskStream("dehaze", urls, 3, 6, seed=11).iterate(rank=0, worker=1), 40))
    assert other != full  # each (rank, worker) has its own stream


def test_resume_reads_only_the_buffer_and_one_batch(shards, tar_reads):
    """Resuming at batch 50 reads the 6 buffered samples and the 3 of the batch (2 members each), not the 150
    samples before: on the previous stream-epoch design this read 2 x (6 + 51 x 3) = 318 members."""
    batch = next(TaskStream("dehaze", shards, batch_size=3, shuffle_buffer=6, seed=11).iterate(start=50))
    assert len(batch) == 3
    print(f"members read to resume at batch 50: {len(tar_reads)}")
    assert len(tar_reads) <= 2 * (6 + 3)


def test_resumed_mix_decodes_only_what_it_yields(shards, tar_reads):
    """A resumed TaskScheduledMix replays the uninterrupted one's keys; it decodes exactly the samples it yields."""
    schedule = TaskSchedule({"dehaze": 1.0, "deblur": 1.0}, seed=5)
    decoded: list[str] = []

    def decoder(raw, rng):
        decoded.append(raw["__key__"])
        return {"key": raw["__key__"], "task": "x"}

    def mix(start: int) -> TaskScheduledMix:
        streams = {t: TaskStream(t, shards, batch_size=2, shuffle_buffer=4, seed=3) for t in ("dehaze", "deblur")}
        collate = lambda samples: {"key": [s["key"] for s in samples]}  # noqa: E731
        return TaskScheduledMix(streams, schedule, start, decoders=dict.fromkeys(streams, decoder), collate=collate)

    full = [(b["step"], b["key"]) for b in take(iter(mix(0)), 30)]
    decoded.clear()
    tar_reads.clear()
    first = next(iter(mix(25)))
    assert (first["step"], first["key"]) == full[25]
    assert decoded == first["key"]  # the skipped 25 steps' samples were never decoded
    assert len(tar_reads) <= 2 * (4 + 2)  # nor read: one task's buffer and batch
    assert [(b["step"], b["key"]) for b in take(iter(mix(25)), 5)] == full[25:]


def test_tar_samples_match_webdataset_and_skip_unread(shards, tar_reads):
    expected = list(wds.WebDataset(shards[3], shardshuffle=False, nodesplitter=None))
    expected = [{k: v for k, v in s.items() if k != "__local_path__"} for s in expected]
    assert [s for _, s in tar_samples(shards[3])] == expected
    tar_reads.clear()
    assert [(i, s["__key__"]) for i, s in tar_samples(shards[3], wanted={2, 6})] == [(2, "s3-002"), (6, "s3-006")]
    assert len(tar_reads) == 4  # only the two wanted samples' members
    tar_reads.clear()
    assert [count_samples(u) for u in shards] == list(COUNTS) and not tar_reads


def test_shuffle_buffers_are_sized_by_the_mib_bound_and_logged(tmp_path, caplog):
    two = {"dehaze": write_shards(tmp_path / "dehaze"), "deblur": write_shards(tmp_path / "deblur", (4, 4))}
    sample_bytes = {t: sum(Path(u).stat().st_size for u in urls) / (sum(COUNTS) if t == "dehaze" else 8)
                    for t, urls in two.items()}  # fmt: skip
    tasks = {t: {"urls": str(tmp_path / t), "batch_size": 2} for t in two}
    mib = 0.05  # 52429 bytes per worker, 26214 per task stream: 4 samples of ~5.5 KiB (tar headers and padding)
    dm = MultiTaskDataModule(tasks=tasks, num_workers=2, shuffle_buffer_mib=mib)
    buffers = dm.buffers()
    for task in two:
        assert buffers[task]["sample_bytes"] == pytest.approx(sample_bytes[task])
        assert buffers[task]["samples"] == int(mib * 2**20 / 2 // sample_bytes[task]) >= 2
        assert buffers[task]["samples"] * buffers[task]["sample_bytes"] <= mib * 2**20 / 2
        assert dm.task_pipeline(task).shuffle_buffer == buffers[task]["samples"]
    capped = MultiTaskDataModule(tasks=tasks, shuffle_buffer_mib=mib, shuffle_buffer=2).buffers()
    assert {t: b["samples"] for t, b in capped.items()} == {"dehaze": 2, "deblur": 2}
    with caplog.at_level(logging.INFO, logger="vidiff.data.datamodule"):
        dm.train_dataloader()
    line = next(r.getMessage() for r in caplog.records if "shuffle buffers" in r.getMessage())
    assert "at most 51.2 KiB per loader worker" in line and "x 2 worker(s) x 1 rank(s) = 102.4 KiB per node" in line
    assert "x 2 worker(s) x 8 rank(s) = 819.2 KiB per node" in dm.buffer_summary(ranks_per_node=8)
    with pytest.raises(VIDiffError, match="shuffle_buffer_mib"):
        MultiTaskDataModule(tasks=tasks, shuffle_buffer_mib=0)
