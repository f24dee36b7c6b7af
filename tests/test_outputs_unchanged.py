"""Refactors keep results: the sample corpus gives the bytes and the losses recorded before them.

The digests and losses below were recorded with the code as it stood before the package layout
moved to floors and a stage registry (issue 11); a change that means to alter results updates
them on purpose, in the same commit, saying why. Steps 17-20 changed with the learning-rate
schedule fix (issue 15: the peak ran twice, so every decay step used the previous step's rate).
clean/, dropped/ and everything after them changed when MinHash's default shingle hash became
`fast` (issue 12): near-duplicate pairs close to the threshold fall on other sides of it, so
minhash_dedup removes other documents (with `prep.minhash_dedup.shingle_hash=datasketch` the
sample gives the earlier bytes, and exact_dedup's removals are the same either way). The shards
and every loss changed again when validation moved to near-duplicate groups (issue 15: near
copies straddled the split). The tokenizer, the shards and the losses were recorded again when
configs/sample.yaml was tuned for samples that read like the corpus (issue 17: vocabulary 4,096
instead of 8,192, learning rate 2e-3 reached after 20 steps instead of 3e-3 after 15). The manifest is compared without its `prep_config`, which holds
absolute input paths.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, metrics

RECORDED_DIGESTS = {
    "clean": "00a1f8fea27da22ea627b23d8faf8f87b8d1a69f405e2f341fb98d1f583a7146",
    "dropped": "a262ef3f2a426e6aff1b9afcf9fa71cec1f34cb8d28a059e176af2fb72edec74",
    "quarantine": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "tokenizer": "db7642237e6559435e118f4865818ebb6a94429d294ee266313a795a62c026cd",
    "shards": "22e6c87274ef50131db249e4cd34df60c6b903e19841093b55d6a9062949a22b",
}
RECORDED_LOSSES = [
    8.30842399597168, 8.289403915405273, 8.31452751159668, 8.293561935424805, 8.3123779296875,
    8.290712356567383, 8.300285339355469, 8.293182373046875, 8.282808303833008, 8.25898265838623,
    8.234703063964844, 8.203717231750488, 8.138029098510742, 8.093704223632812, 7.9951581954956055,
    8.025753021240234, 7.967106342315674, 7.915663719177246, 7.914120674133301, 7.932753562927246,
]
TINY_MODEL = ["model.d_model=64", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=1", "model.ffn_hidden=176",
              "train.global_batch_size=4", "train.micro_batch_size=2", "train.max_steps=20", "train.log_interval=1",
              "train.eval_interval=10", "checkpoint.enabled=false"]


def file_digest(path: Path) -> str:
    data = path.read_bytes()
    if path.name == "manifest.json":
        manifest = json.loads(data)
        manifest.pop("prep_config")
        data = json.dumps(manifest, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(f"{path.relative_to(folder).as_posix()} {file_digest(path)}\n".encode())
    return digest.hexdigest()


def crucible(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def sample_prep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("sample") / "prep"
    crucible("prep", "--config", "configs/sample.yaml", "--output", str(output), "--no-progress")
    return output


@pytest.mark.parametrize("folder", sorted(RECORDED_DIGESTS))
def test_sample_prep_outputs_are_the_recorded_bytes(sample_prep: Path, folder: str) -> None:
    assert folder_digest(sample_prep / folder) == RECORDED_DIGESTS[folder]


def test_twenty_steps_give_the_recorded_losses(sample_prep: Path, tmp_path: Path) -> None:
    crucible("train", "--config", "configs/sample.yaml", "--data", str(sample_prep / "shards"),
             "--output", str(tmp_path / "run"), *[arg for key in TINY_MODEL for arg in ("--set", key)])
    losses = [m["loss"] for m in metrics(tmp_path / "run") if "loss" in m]
    assert losses == pytest.approx(RECORDED_LOSSES, rel=1e-6, abs=0)
