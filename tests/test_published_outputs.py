"""Published outputs share nothing with the work folder, and a rerun rebuilds cached step
outputs that changed since they were written, so damage is never republished."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.prep import run_prep
from tests.conftest import REPO

OVERRIDES = [
    "prep.stages=[normalize, tokenize, pack]",
    "prep.tokenizer.vocab_size=512",
    "prep.pack.seq_len=64",
    "prep.pack.val_fraction=0.1",
    "prep.workers=1",
]


def prep(output: Path) -> dict:
    config = load_config(None, OVERRIDES)
    config.prep.inputs = [REPO / "data" / "sample" / "corpus-02.jsonl.zst"]
    return run_prep(config.prep, output, show_progress=False)


def digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def scribble(path: Path) -> None:
    """What a careless edit does: change bytes in place (through the inode, as an editor saving over it would)."""
    path.chmod(0o644)
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size // 2)
        handle.write(b"\xff" * 16)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    output = tmp_path_factory.mktemp("published")
    prep(output)
    return output, digests(output / "shards")


def test_published_shards_are_read_only_copies(reference: tuple[Path, dict[str, str]]) -> None:
    output, _ = reference
    published = sorted((output / "shards").rglob("*.arrow")) + [output / "shards" / "tokenizer.json"]
    assert len(published) >= 3
    for path in published:
        assert path.stat().st_nlink == 1, f"{path.name} is a hard link"
        assert not path.stat().st_mode & 0o222, f"{path.name} is writable"


def test_an_edited_published_shard_leaves_the_cache_alone_and_a_rerun_restores_it(
    reference: tuple[Path, dict[str, str]],
) -> None:
    output, expected = reference
    shard = sorted((output / "shards" / "train").glob("*.arrow"))[0]
    cached = output / "work" / "pack" / "train" / shard.name
    cached_before = cached.read_bytes()
    scribble(shard)
    assert cached.read_bytes() == cached_before
    prep(output)
    assert digests(output / "shards") == expected


@pytest.mark.parametrize("cached", ["pack/train/train-00000-000.arrow", "normalize/data-00000.parquet"])
def test_an_edited_cached_output_is_rebuilt_not_republished(
    reference: tuple[Path, dict[str, str]], cached: str, capsys: pytest.CaptureFixture[str]
) -> None:
    output, expected = reference
    scribble(output / "work" / cached)
    prep(output)
    assert "rebuilding it" in capsys.readouterr().out
    assert digests(output / "shards") == expected
    assert (output / "work" / cached).exists()


def test_a_removed_cached_output_is_rebuilt(reference: tuple[Path, dict[str, str]]) -> None:
    output, expected = reference
    (output / "work" / "tokenize" / "tokens-00000.arrow").unlink()
    prep(output)
    assert digests(output / "shards") == expected
