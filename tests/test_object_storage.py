"""Object storage against a real S3 API over HTTP (moto's server on 127.0.0.1): the storage layer, its faults
(a 500, a missing object, wrong credentials, a server killed mid-upload), shards read through the local
cache, and checkpoint uploads; real s3fs and boto3 clients throughout."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zstandard

from data_prep.shards import ShardError, read_manifest
from pipeline.ground import storage
from pipeline.ground.names import CHECKPOINT_META
from tests.conftest import REPO, english_shards, read_set, write_jsonl
from tests.s3_server import SECRET_KEY, S3Server
from tests.test_resume import tree_bytes
from training.config import CheckpointConfig, ShardCacheConfig
from training.data import DistributedLoader, PackedDataset
from training.hooks import EventLog
from training.remote_checkpoints import RemoteCheckpoints
from training.checkpoint_meta import META_DIGEST, meta_digest
from training.shard_cache import ShardCache


@pytest.fixture(scope="module")
def bucket(s3: S3Server) -> str:
    s3.make_bucket("crucible-tests")
    return "s3://crucible-tests"


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards of 150 real English documents in files of at most 100 kB: several to cache and evict."""
    return english_shards(
        tmp_path_factory,
        "small_shards",
        [{"id": r["id"], "text": r["text"]} for r in read_set("english", 150)],
        "prep.pack.max_shard_mb=0.1",
    )


@pytest.fixture(scope="module")
def remote_shards(s3: S3Server, bucket: str, small_shards: Path) -> str:
    """small_shards and prep's stats beside them, uploaded with boto3."""
    s3.upload_folder(small_shards.parent, f"{bucket}/prep")
    return f"{bucket}/prep/shards"


def read(url: str) -> bytes:
    with storage.open_binary(url) as handle:
        return handle.read()


def test_objects_are_read_listed_and_identified_by_content(s3: S3Server, bucket: str) -> None:
    url = f"{bucket}/basics/a.txt"
    s3.put(url, b"first")
    before = storage.identity(url)
    assert read(url) == b"first" and storage.listing(f"{bucket}/basics") == {"a.txt": 5}
    s3.put(url, b"other")  # same size, another content: another ETag
    assert storage.identity(url) != before and storage.identity(url)[0] == 5
    with storage.open_binary(url) as handle:
        handle.seek(2)
        assert handle.read(2) == b"he"


def test_a_500_on_one_request_is_retried(s3: S3Server, bucket: str) -> None:
    url = f"{bucket}/retry/b.txt"
    s3.put(url, b"payload")
    served = s3.faults_served()
    s3.fault("GET", "/retry/b.txt", status=500)
    assert read(url) == b"payload"
    assert s3.faults_served() == served + 1, "the 500 was served and the read retried past it"


def test_a_missing_object_is_not_found(bucket: str, remote_shards: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read(f"{bucket}/nothing/here.txt")
    with pytest.raises(ShardError, match="manifest.json not found"):
        ShardCache(ShardCacheConfig(folder=tmp_path)).view(f"{bucket}/nothing")


def test_wrong_credentials_are_one_line_naming_the_bucket_never_the_secret(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import s3fs

    from pipeline.cli import main

    secret = "a-wrong-secret-that-must-not-show"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-a-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    s3fs.S3FileSystem.clear_instance_cache()  # a client made with the right key would be reused otherwise
    try:
        assert main(["generate", "--checkpoint", f"{bucket}/some-run"]) == 2
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [
        "crucible generate: access to bucket crucible-tests refused (Forbidden): "
        "check the credentials (AWS_ACCESS_KEY_ID/AWS_PROFILE, ~/.aws/credentials) "
        "and storage.endpoint_url"
    ]
    assert secret not in out + err and SECRET_KEY not in out + err


def test_local_paths_work_without_s3fs_and_an_s3_path_names_the_extra(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("local")
    code = (
        "import sys; sys.modules['s3fs'] = None; from pipeline.ground import storage; "
        f"print(storage.open_binary({str(tmp_path / 'a.txt')!r}).read().decode()); "
        "storage.open_binary('s3://bucket/key')"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.stdout == "local\n"
    assert result.stderr.strip().splitlines()[-1] == (
        "pipeline.ground.errors.UserError: s3://bucket/key: object storage needs s3fs: pip install 'crucible[cloud]'"
    )


def test_shards_from_s3_give_the_same_batches_through_a_bounded_cache(
    remote_shards: str, small_shards: Path, tmp_path: Path
) -> None:
    local = PackedDataset(small_shards, "train")
    limit = sum(e.bytes for e in local.entries) / 2
    cache = ShardCache(ShardCacheConfig(folder=tmp_path, max_gb=limit / 2**30, download_threads=2))
    view = cache.view(remote_shards)
    assert (view.parent / "stats.json").read_bytes() == (small_shards.parent / "stats.json").read_bytes()
    remote = PackedDataset(view, "train", remote=remote_shards, cache=cache)
    loaders = [DistributedLoader(data, 4, seed=7, rows_per_step=8) for data in (local, remote)]
    for _ in range(24):
        ours, theirs = (loader.next_batch() for loader in loaders)
        assert np.array_equal(ours.inputs, theirs.inputs) and np.array_equal(ours.segments, theirs.segments)
    cache.close()
    held = sum(p.stat().st_size for p in (tmp_path / "objects").glob("*.arrow"))
    assert len(local.entries) > 4 and 0 < held <= limit, "least recently used shards were evicted"


def test_a_shard_that_does_not_match_its_hash_is_refused(
    s3: S3Server, bucket: str, small_shards: Path, tmp_path: Path
) -> None:
    s3.upload_folder(small_shards, f"{bucket}/altered/shards")
    entry = read_manifest(small_shards).splits["train"].shards[0]
    data = bytearray((small_shards / "train" / entry.file).read_bytes())
    data[-100] ^= 0xFF  # same size: only the hash can tell
    s3.put(f"{bucket}/altered/shards/train/{entry.file}", bytes(data))
    cache = ShardCache(ShardCacheConfig(folder=tmp_path))
    dataset = PackedDataset(
        cache.view(f"{bucket}/altered/shards"), "train", remote=f"{bucket}/altered/shards", cache=cache
    )
    with pytest.raises(ShardError, match="does not match its manifest hash"):
        dataset.shard(0)
    assert not list((tmp_path / "objects").glob("*.arrow")), "a bad download never enters the cache"


def remote_tree(url: str) -> dict[str, bytes]:
    """Every object under a prefix, by its name below it (as tree_bytes names a folder's files)."""
    return {found.removeprefix(url + "/"): read(found) for found in storage.objects_under(url) or []}


@pytest.mark.slow  # four prep runs
def test_prep_from_s3_inputs_reads_byte_ranges_and_gives_the_same_shards(
    s3: S3Server, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plain JSONL file cut into pieces (each task reads its byte range) and a compressed one, from disk and
    from a prefix, published to a folder and to a prefix; the outputs must be the same bytes, a rerun
    republishes them unchanged, and a published prep without its manifest is refused by train."""
    from pipeline.config import load_config
    from pipeline.prep import run_prep

    corpus = tmp_path / "corpus"
    records = [{"id": r["id"], "text": r["text"]} for r in read_set("english", 120)]
    write_jsonl(corpus / "plain.jsonl", records[:80])
    packed = write_jsonl(tmp_path / "packed.jsonl", records[80:])
    (corpus / "packed.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(packed.read_bytes()))
    s3.upload_folder(corpus, f"{bucket}/inputs/corpus")
    sets = [
        "prep.stages=[normalize, exact_dedup, tokenize, pack]",
        "prep.tokenizer.vocab_size=400",
        "prep.pack.seq_len=32",
        "prep.shard_mb=0.05",
        "prep.workers=1",
    ]
    for name, inputs in (("local", corpus), ("remote", f"{bucket}/inputs/corpus")):
        config = load_config(None, sets, {"prep.inputs": [str(inputs)]})
        run_prep(config.prep, tmp_path / name, show_progress=False)
    local, remote = (tree_bytes(tmp_path / name / "shards") for name in ("local", "remote"))
    manifests = [json.loads(tree.pop("manifest.json")) for tree in (local, remote)]
    assert local == remote and len(local) > 3, "the same shard files, byte for byte"
    assert [m["prep_config"].pop("inputs") for m in manifests] == [[str(corpus)], [f"{bucket}/inputs/corpus"]]
    assert manifests[0] == manifests[1], "the manifests differ only in where the inputs were"
    plain = [bytes_range for path, bytes_range in s3.reads() if path.endswith("/inputs/corpus/plain.jsonl")]
    assert len(plain) > 1 and all(plain), "each task read its piece with ranged GETs"
    assert any(not bytes_range.startswith("bytes=0-") for bytes_range in plain), "a task started mid-file"

    from pipeline.cli import main

    published = f"{bucket}/published"
    prep = [
        "prep",
        "--input",
        f"{bucket}/inputs/corpus",
        "--output",
        published,
        "--no-progress",
        *(arg for value in sets for arg in ("--set", value)),
    ]
    assert main(prep) == 2, "an output in object storage needs --work"
    assert capsys.readouterr().err.strip().splitlines() == [
        f"crucible prep: --output {published} is in object storage: give --work DIR, a local or shared folder for "
        f"prep's step files, markers and lock (a rerun with the same --work resumes)"
    ]
    assert not storage.listing(published), "refused before anything was written"
    for run in ("first", "rerun"):
        assert main([*prep, "--work", str(tmp_path / "work")]) == 0
        tree = remote_tree(published)
        assert {"shards/manifest.json", "stats.json"} <= set(tree)
        assert not tree_bytes(tmp_path / "work" / "uploading"), "what publishing made was uploaded, then removed"
        for folder in ("shards", "clean"):
            assert {
                k.removeprefix(folder + "/"): v for k, v in tree.items() if k.startswith(folder + "/")
            } == tree_bytes(tmp_path / "remote" / folder), f"{folder}/ published byte for byte ({run})"
    assert "nothing redone" in capsys.readouterr().out
    storage.remove(f"{published}/shards/manifest.json")  # what a reader sees while a republish is under way
    assert main(["train", "--data", f"{published}/shards", "--output", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"crucible train: {published}/shards/manifest.json not found: is {published}/shards a shards folder made "
        f"by `prep`?"
    ]


def test_the_configured_endpoint_reaches_the_prep_workers(
    s3: S3Server, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the endpoint in the config alone (no AWS_ENDPOINT_URL), the spawned workers that read their byte
    ranges of an s3:// input reach the same store as the driver."""
    from pipeline.cli import main

    records = [{"id": r["id"], "text": r["text"]} for r in read_set("english", 60)]
    s3.upload_folder(write_jsonl(tmp_path / "corpus" / "docs.jsonl", records).parent, f"{bucket}/endpoint")
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(storage, "_config", storage.StorageConfig())  # main() configures this process
    sets = [
        "prep.stages=[normalize, tokenize, pack]",
        "prep.tokenizer.vocab_size=400",
        "prep.pack.seq_len=32",
        "prep.shard_mb=0.02",
        "prep.workers=2",
        f"storage.endpoint_url={s3.endpoint}",
    ]
    output = tmp_path / "out"
    assert (
        main(
            [
                "prep",
                "--input",
                f"{bucket}/endpoint/docs.jsonl",
                "--output",
                str(output),
                "--no-progress",
                *(arg for value in sets for arg in ("--set", value)),
            ]
        )
        == 0
    )
    stats = json.loads((output / "stats.json").read_text())
    assert stats["stages"][0]["docs_in"] == len(records)
    assert len({path for path, _ in s3.reads() if path.endswith("/endpoint/docs.jsonl")}) == 1
    assert len([r for path, r in s3.reads() if path.endswith("/endpoint/docs.jsonl")]) > 1, "several tasks read it"


def make_checkpoint(folder: Path, step: int, size: int = 1 << 20) -> Path:
    """A checkpoint folder as the trainer publishes it: files, then crucible.json with their hashes."""
    path = folder / f"step-{step:08d}"
    path.mkdir(parents=True)
    payload = np.random.default_rng(step).bytes(size)
    (path / "model.pt").write_bytes(payload)
    files = {"model.pt": hashlib.sha256(payload).hexdigest()}
    meta = {"step": step, "healthy": True, "files": files, "config": {}}
    (path / CHECKPOINT_META).write_text(json.dumps(meta | {META_DIGEST: meta_digest(meta)}))
    return path


def test_cut_off_uploads_are_never_chosen_and_keep_last_applies_remotely(bucket: str, tmp_path: Path) -> None:
    remote = RemoteCheckpoints(f"{bucket}/run-keep", CheckpointConfig(keep_last=2), EventLog(tmp_path, True))
    for step in (2, 4, 6):
        remote.upload(make_checkpoint(tmp_path / "local", step))
        assert remote.wait() == {}
    assert remote.complete() == [4, 6], "keep_last=2 pruned step 2 remotely"
    storage.upload(tmp_path / "local" / "step-00000006" / "model.pt", f"{bucket}/run-keep/step-00000008/model.pt")
    assert remote.complete() == [4, 6], "a folder without crucible.json is an upload that was cut off"
    fetched = remote.fetch_newest(tmp_path / "fresh", after=-1)
    assert fetched.name == "step-00000006"
    assert (fetched / "model.pt").read_bytes() == (tmp_path / "local" / "step-00000006" / "model.pt").read_bytes()


def test_an_upload_survives_the_server_killed_mid_upload(tmp_path: Path) -> None:
    """Its own server: killed while the checkpoint's file is on the wire, restarted empty, the bucket made again."""
    server = S3Server()
    server.start()
    try:
        saved = {key: os.environ.get(key) for key in server.env}
        os.environ.update(server.env)
        server.make_bucket("flaky")
        events = EventLog(tmp_path, True)
        remote = RemoteCheckpoints("s3://flaky/run", CheckpointConfig(), events)
        server.fault("PUT", "step-00000003/model.pt", status=None, delay=30)
        remote.upload(make_checkpoint(tmp_path / "local", 3, size=4 << 20))
        deadline = time.monotonic() + 30
        while server.faults_served() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert remote.holds("step-00000003"), "the local copy stays while the upload is under way"
        server.kill()
        server.start()
        server.make_bucket("flaky")
        assert remote.wait() == {}
        assert remote.complete() == [3] and not remote.holds("step-00000003")
        fetched = remote.fetch("step-00000003", tmp_path / "fresh")
        assert (fetched / "model.pt").read_bytes() == (tmp_path / "local" / "step-00000003" / "model.pt").read_bytes()
    finally:
        server.kill()
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


def test_a_failed_upload_is_retried_then_reported_and_the_local_copy_kept(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    storage.configure(storage.StorageConfig(upload_retries=1))
    try:
        remote = RemoteCheckpoints(f"{bucket}/run-refused", CheckpointConfig(), EventLog(tmp_path, True))
        s3.fault("PUT", "run-refused/step-00000005/model.pt", status=403, count=2)
        remote.upload(make_checkpoint(tmp_path / "local", 5))
        failed = remote.wait()
    finally:
        storage.configure(storage.StorageConfig())
    assert list(failed) == ["step-00000005"] and "injected fault" in failed["step-00000005"]
    assert remote.holds("step-00000005") and remote.complete() == []
    logged = [json.loads(line)["event"] for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert logged == ["upload_retry", "upload_failed"]
    remote.upload(tmp_path / "local" / "step-00000005")
    assert remote.wait() == {} and remote.complete() == [5], "a later try (the fault spent) uploads it"
