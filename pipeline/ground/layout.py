"""The folders Crucible writes, as path objects: a run folder holds a prep folder and a train folder.

Every module that reads or writes one of these folders goes through its object, so the layout is
written down once (`tests/test_contracts.py` finds no folder name joined by hand elsewhere):

    RUN/                      RunFolder (`crucible run` and `crucible submit`)
      data/                   PrepFolder (`crucible prep`; may be an object-storage prefix)
        clean/ dropped/ quarantine/ shards/ stats.json
        work/                 step folders, markers, the lock (local or shared disk only)
      train/                  TrainFolder (`crucible train`)
        metrics.jsonl events.jsonl checkpoints/ tensorboard/ mlruns/
      slurm/ toy_world/ post/ report.html report.md
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.ground import storage
from pipeline.ground.names import CHECKPOINTS, EVENTS_LOG, LATEST, MANIFEST, METRICS_LOG, PREP_STATS
from pipeline.ground.storage import Location


@dataclass(frozen=True)
class TrainFolder:
    """A training run's output: its logs, its checkpoints and its trackers' files."""

    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_LOG

    @property
    def events(self) -> Path:
        return self.root / EVENTS_LOG

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def latest(self) -> Path:
        """The pointer file that names the newest published checkpoint."""
        return self.checkpoints / LATEST

    def checkpoint(self, tag: str) -> Path:
        return self.checkpoints / tag

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def mlruns(self) -> Path:
        return self.root / "mlruns"

    def checkpoint_tags(self) -> list[str]:
        """The names of the checkpoint folders here (step-N), in name order; loadable or not."""
        return sorted(p.name for p in self.checkpoints.glob("step-*"))

    def holds_a_run(self) -> bool:
        return self.metrics.exists() or self.checkpoints.is_dir()

    @staticmethod
    def pointed_at(folder: Path) -> TrainFolder:
        """The train folder a user means by `folder`: it, its `checkpoints/` folder, the pointer file in
        that, or a run folder (which holds its training in train/)."""
        if folder.name == LATEST:
            return TrainFolder(folder.parents[1])
        if folder.name == CHECKPOINTS:
            return TrainFolder(folder.parent)
        inside_run = RunFolder(folder).train
        if not TrainFolder(folder).checkpoints.is_dir() and inside_run.checkpoints.is_dir():
            return inside_run
        return TrainFolder(folder)


@dataclass(frozen=True)
class PrepFolder:
    """A prep output: published documents, shards and counts; a local one also holds the work folder.

    The `*_file` names are relative to the root, as object storage names its objects."""

    root: Location
    CLEAN = "clean"
    DROPPED = "dropped"
    QUARANTINE = "quarantine"
    SHARDS = "shards"

    def at(self, relative: str) -> Location:
        return storage.join(self.root, relative)

    @property
    def shards(self) -> Location:
        return self.at(self.SHARDS)

    @property
    def local_shards(self) -> Path:
        return Path(self.root) / self.SHARDS

    @property
    def stats(self) -> Location:
        """Written last: a prep is published when it exists."""
        return self.at(PREP_STATS)

    @property
    def local_stats(self) -> Path:
        return Path(self.root) / PREP_STATS

    @property
    def quarantine(self) -> Path:
        return Path(self.root) / self.QUARANTINE

    @property
    def work(self) -> Path:
        """The default work folder (a prep into object storage is given one apart)."""
        return Path(self.root) / "work"

    @property
    def ray(self) -> Path:
        """The Ray executor's job record and config snapshot."""
        return Path(self.root) / "ray"

    @staticmethod
    def in_shards(*parts: str) -> str:
        """A name in shards/: the manifest, the tokenizer, a split's folder or one of its files."""
        return "/".join([PrepFolder.SHARDS, *parts])

    MANIFEST_FILE = f"{SHARDS}/{MANIFEST}"
    STATS_FILE = PREP_STATS

    @staticmethod
    def clean_file(task: int) -> str:
        return f"{PrepFolder.CLEAN}/part-{task:05d}.parquet"

    @staticmethod
    def kept_apart_file(kind: str, stage: str, task: int) -> str:
        """A stage's dropped or quarantined documents of one task (`kind`: DROPPED or QUARANTINE)."""
        return f"{kind}/{stage}-{task:05d}.parquet"

    @staticmethod
    def holding(shards: Location) -> PrepFolder:
        """The prep folder a shards folder was published into (stats.json sits beside `shards/`)."""
        if storage.is_remote(shards):
            return PrepFolder(shards.rstrip("/").rsplit("/", 1)[0])
        return PrepFolder(Path(shards).parent)

    def holds_a_prep(self) -> bool:
        return self.work.is_dir()


@dataclass(frozen=True)
class RunFolder:
    """A whole run: prep into data/, training into train/, and what the run shows of them."""

    root: Path

    @property
    def data(self) -> PrepFolder:
        return PrepFolder(self.root / "data")

    @property
    def train(self) -> TrainFolder:
        return TrainFolder(self.root / "train")

    @property
    def slurm(self) -> Path:
        """Submitted jobs: their scripts, logs, config snapshot and record."""
        return self.root / "slurm"

    @property
    def toy_world(self) -> Path:
        return self.root / "toy_world"

    @property
    def post(self) -> Path:
        return self.root / "post"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"
