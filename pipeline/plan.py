"""The stage graph: which steps a prep run executes, in what order, with how many tasks.

A stage is one or more steps; a step is `n_tasks` independent tasks. Per-shard steps have one
task per input shard; the global steps of the dedupe stages (find duplicates, cluster) have one,
and near-dedupe's bucket step one per LSH band. The plan is a pure function of the config and
the inputs, so any process (a local worker, a Slurm array task) can rebuild it and run task i
of step s alone. Each step's fingerprint chains its stage's config with everything upstream:
change a quality threshold and only the quality step reruns.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from data_prep.readers import InputShard, plan_shards
from pipeline.config import PrepConfig
from pipeline.ground.hashing import file_sha256


@dataclass(frozen=True)
class Step:
    name: str  # e.g. "normalize", "minhash_dedup.buckets"
    stage: str  # the stats row this step belongs to
    kind: str  # which task function runs it
    n_tasks: int
    source: str | None  # the step whose per-shard documents this step reads
    fingerprint: str
    makes_docs: bool  # writes per-shard documents (and counts them for the stage table)


@dataclass(frozen=True)
class Plan:
    config: PrepConfig
    shards: tuple[InputShard, ...]
    steps: tuple[Step, ...]

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"no step {name!r} in this plan (steps: {[s.name for s in self.steps]})")

    @property
    def last_docs_step(self) -> Step:
        return [s for s in self.steps if s.makes_docs][-1]


def _digest(*parts: object) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _input_identity(shards: list[InputShard]) -> list[tuple[str, int, int | None, int, int]]:
    identity = []
    for shard in shards:
        for piece in shard.pieces:
            stat = Path(piece.path).stat()
            identity.append((piece.label, piece.start, piece.end, stat.st_size, stat.st_mtime_ns))
    return identity


# (step suffix, kind, one task per shard?, writes documents?) for each stage, in order.
STAGE_STEPS: dict[str, list[tuple[str, str, str, bool]]] = {
    "normalize": [("", "doc", "shards", True)],
    "exact_dedup": [
        (".hash", "exact_hash", "shards", False),
        (".find", "exact_find", "one", False),
        (".filter", "exact_filter", "shards", True),
    ],
    "minhash_dedup": [
        (".signatures", "minhash_signatures", "shards", False),
        (".buckets", "minhash_buckets", "bands", False),
        (".clusters", "minhash_clusters", "one", False),
        (".filter", "minhash_filter", "shards", True),
    ],
    "langid": [("", "doc", "shards", True)],
    "pii": [("", "doc", "shards", True)],
    "quality": [("", "doc", "shards", True)],
    "tokenize": [(".train", "tokenizer_train", "one", False), ("", "tokenize", "shards", False)],
    "pack": [("", "pack", "shards", False)],
}


CONFIG_SECTION = {"tokenize": "tokenizer"}  # stages whose config section has another name


def build_plan(config: PrepConfig) -> Plan:
    shards = plan_shards(list(config.inputs), int(config.shard_mb * 2**20))
    n = len(shards)
    read_fp = _digest(_input_identity(shards), config.read.model_dump(mode="json"), config.batch_size)
    steps = [Step("read", "read", "read", n, None, read_fp, True)]
    source, fingerprint = "read", read_fp
    for stage in config.stages:
        stage_config = getattr(config, CONFIG_SECTION.get(stage, stage)).model_dump(mode="json")
        if stage == "tokenize" and config.tokenizer.path is not None:
            stage_config["file_sha256"] = file_sha256(config.tokenizer.path)
        counts = {"shards": n, "one": 1, "bands": config.minhash_dedup.band_layout()[0]}
        for suffix, kind, tasks, makes_docs in STAGE_STEPS[stage]:
            fingerprint = _digest(fingerprint, stage + suffix, stage_config)
            steps.append(Step(stage + suffix, stage, kind, counts[tasks], source, fingerprint, makes_docs))
        if steps[-1].makes_docs:
            source = steps[-1].name
    return Plan(config, tuple(shards), tuple(steps))
