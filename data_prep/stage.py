"""The stage contract: a stage only decides, the framework keeps the books.

A per-document stage receives a batch of documents as an Arrow table and returns a `Decision`: the same rows
(possibly with rewritten or added columns) and, for the rows it rejects, a `Drop` with a reason.
Counting, timing, lineage records and quarantine files are the executor's job, so no stage can
forget them and every document that enters a stage leaves it kept, dropped or quarantined.

A stage that needs the whole corpus (dedupe, tokenizer training) declares its steps instead: each
step has a run function for one task, a rule for its task count and the files it owns, and the
executors run any step the same way. `data_prep.registry` lists the stages in pipeline order.
"""

from __future__ import annotations

import importlib
import pickle
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from pipeline.ground.schema import Section

# Columns every document carries between stages. Stages may add more (lang, lang_score, ...).
ID = "id"
TEXT = "text"
LANG = "lang"  # the language langid labels a document with
ORIGIN = "origin"  # file:offset (or file:row) of the record a document came from

# Columns of documents read from web archives (WARC, WET) and of the pages extract turns into text. They
# travel like `prep.read.keep_fields`: string columns into clean/ and into each lineage record's detail.
URL, DATE, WARC_RECORD_ID, CHARSET = "url", "date", "warc_record_id", "charset"
TITLE, HTML_LANG = "title", "html_lang"  # the page's <title> and its <html lang> attribute
WARC_FIELDS = (URL, DATE, WARC_RECORD_ID, CHARSET)
PAGE_FIELDS = (*WARC_FIELDS, TITLE, HTML_LANG)
HTML = "_html"  # internal: true where `text` still holds a page's HTML, which extract turns into text


@dataclass(frozen=True)
class Drop:
    """Why one document leaves the stream; `quarantine` marks malformed input, not a filter."""

    reason: str
    detail: dict[str, Any] = field(default_factory=dict)
    quarantine: bool = False


@dataclass
class Decision:
    """A stage's verdict on one batch: `table` has the input's rows, `drops` maps row -> Drop."""

    table: pa.Table
    drops: dict[int, Drop] = field(default_factory=dict)


class DocStage(ABC):
    """A per-document stage; subclasses set `name` and implement `decide`."""

    name: ClassVar[str]

    def setup(self) -> None:
        """Load models or tables once per worker process, before the first batch."""

    @abstractmethod
    def decide(self, table: pa.Table) -> Decision:
        """Return the decision for `table`; must not change the number or order of rows."""

    def tally(self, kept: pa.Table) -> dict[str, dict[str, int]]:
        """Counts worth reporting over the kept documents (e.g. languages); summed over tasks."""
        return {}


def replace_column(table: pa.Table, name: str, values: pa.Array | list[Any]) -> pa.Table:
    """Set column `name` to `values`, adding it at the end when it is new."""
    array = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
    index = table.schema.get_field_index(name)
    if index < 0:
        return table.append_column(name, array)
    return table.set_column(index, name, array)


@dataclass(frozen=True)
class TaskContext:
    """What one task of a step needs: the prep config, the input shards, where to read and write."""

    config: Any  # data_prep.config.PrepConfig, which is built on this contract
    shards: tuple[Any, ...]  # data_prep.readers.InputShard
    work: Path  # the run's work folder; each step writes into work / step
    stage: str  # the stage this step belongs to
    settings: Any  # that stage's config section
    step: str  # this step's folder name, e.g. "minhash_dedup.buckets"
    source: str | None  # the step whose per-shard documents this step reads
    task: int
    report: Callable[[int], None]  # progress: units done since the last call
    reads: tuple[str, ...] = ()  # the steps whose files this step opens: its source and what its spec declares

    @property
    def folder(self) -> Path:
        return self.work / self.step

    def folder_of(self, step: str) -> Path:
        """The folder of `step`, which this step must be or have declared in `StepSpec.reads`: the plan
        orders, seals and reruns steps by what they declare, so an undeclared read would go stale unseen."""
        if step != self.step and step not in self.reads:
            raise UndeclaredRead(
                f"step {self.step} opened the files of {step} without declaring it: add {step!r} to its "
                f"StepSpec's reads (it reads {', '.join(self.reads) or 'nothing'})"
            )
        return self.work / step


class UndeclaredRead(RuntimeError):
    """A step's task opened another step's files that its spec does not declare: a bug in the stage."""


def per_shard(config: Any, n_shards: int) -> int:
    """One task per input shard (the per-document and per-shard steps)."""
    return n_shards


def single(config: Any, n_shards: int) -> int:
    """One task for the whole corpus (a global step)."""
    return 1


def docs_seen(docs: int, n_tasks: int) -> int:
    """Progress units of a step whose tasks together see every document once."""
    return docs


def tasks_done(docs: int, n_tasks: int) -> int:
    """Progress units of a step that counts its tasks (each reports 1 when it ends)."""
    return n_tasks


# What publishing takes from a step (`StepSpec.publishes`), besides every document step's kept, dropped and
# quarantined documents.
TOKEN_COUNTS = "token_counts"  # the `tokens` counts of its markers: into stats.json and the shard manifest
SHARD_FILES = "shard_files"  # the training shards its markers list (with their split): into shards/
TOKENIZER = "tokenizer"  # the tokenizer file in its folder: into tokenizer/ and shards/
OVERLAP_MEASURE = "overlap"  # its one marker's `overlap`, the train/val overlap: into stats.json


@dataclass(frozen=True)
class StepSpec:
    """One step of a stage: what a task runs, how many tasks, and whether it passes documents on."""

    suffix: str  # "" for a stage's only or last step, else e.g. ".hash"; the folder is stage + suffix
    run: Callable[[TaskContext], dict[str, Any]]  # returns the counts stored in the completion marker
    tasks: Callable[[Any, int], int] = per_shard  # (config, number of input shards) -> task count
    makes_docs: bool = False  # writes per-shard documents (and counts them for the stage table)
    unit: str = "doc"  # what its progress bar counts
    units: Callable[[int, int], int | None] = docs_seen  # (documents it reads, task count) -> progress total
    reads: tuple[str, ...] = ()  # other steps whose files it opens, besides its document source (where they run)
    publishes: tuple[str, ...] = ()  # what publishing takes from it (TOKEN_COUNTS, SHARD_FILES, ...)


@dataclass(frozen=True)
class StageSpec:
    """A stage: its name (the `prep.stages` entry), its config section and its steps in order."""

    name: str
    config: type[Section]
    steps: tuple[StepSpec, ...]
    section: str = ""  # the config section's key when it differs from the name
    requires: tuple[str, ...] = ()  # stages that must run too
    default: bool = True  # in the default `prep.stages`; opt-in filters that need files of their own are not
    per_document: bool = False  # one `DocStage` step: a named source may skip it or override its settings

    @property
    def section_name(self) -> str:
        return self.section or self.name

    def step_name(self, step: StepSpec) -> str:
        return self.name + step.suffix

    def step(self, name: str) -> StepSpec:
        for step in self.steps:
            if self.step_name(step) == name:
                return step
        raise KeyError(f"stage {self.name} has no step {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (to worker processes, with the plan) as the module attribute that holds it: its steps hold
        functions that may be closures."""
        return _stage_at, _home(self)


_HOMES: dict[int, tuple[str, str]] = {}  # id of a stage -> (module, attribute), found once


def _home(stage: StageSpec) -> tuple[str, str]:
    """The module attribute that holds `stage`: looked for in the modules of its config and steps first."""
    if id(stage) not in _HOMES:
        likely = [stage.config.__module__, *(getattr(step.run, "__module__", "") for step in stage.steps)]
        modules = [sys.modules[name] for name in likely if name in sys.modules] + list(sys.modules.values())
        found = next(
            (
                (module.__name__, name)
                for module in modules
                for name, value in list(vars(module).items())
                if value is stage
            ),
            None,
        )
        if found is None:
            raise pickle.PicklingError(
                f"stage {stage.name!r} is in no module's top level: define it there, so "
                f"that worker processes can import it"
            )
        _HOMES[id(stage)] = found
    return _HOMES[id(stage)]


def _stage_at(module: str, name: str) -> StageSpec:
    stage = getattr(importlib.import_module(module), name)
    assert isinstance(stage, StageSpec), f"{module}.{name} is not a stage"
    return stage
