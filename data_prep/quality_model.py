"""quality_model: score every document with fastText classifiers and drop those below the bar.

Each classifier has a fixed `threshold`, or a `keep_top_fraction` computed over the whole corpus
as DCLM does: the best-scoring fraction of all documents entering the stage is kept, ties broken
by corpus order, so the kept count is round(fraction * documents) whatever the shards or
workers. Three steps: `.score` (per shard) writes the scores, `.cutoff` (one task) finds each
top-fraction classifier's last kept (score, position), and the last step (per shard) adds a
`score_<name>` column to every document and drops those below a classifier's bar, with the
score in lineage. A document failing several classifiers is dropped by the first listed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from data_prep.books import run_stage_on_source, shard_offsets, source_file
from data_prep.classifier import ClassifierTrainConfig, FastTextScorer, model_text
from data_prep.inputs import file_digests
from data_prep.stage import TEXT, Decision, DocStage, Drop, StageSpec, StepSpec, TaskContext, replace_column, single
from pipeline.ground.atomic import write_json, write_npy
from pipeline.ground.schema import Section

SCORE, CUTOFF = "quality_model.score", "quality_model.cutoff"


class ClassifierRule(Section):
    """One classifier and its bar: a score threshold or a global keep-top fraction."""

    name: str = Field(pattern=r"^\w+$", description="Names the `score_<name>` column and the drop reason.")
    model_path: Path = Field(description="A model made by `crucible classifier train` (model.bin).")
    label: str = Field("hq", description="The class whose probability is the score.")
    threshold: float | None = Field(None, ge=0, le=1, description="Drop documents scoring below this.")
    keep_top_fraction: float | None = Field(
        None, gt=0, le=1, description="Keep this share of all documents, the best scoring (DCLM style)."
    )

    @model_validator(mode="after")
    def _one_bar(self) -> ClassifierRule:
        if (self.threshold is None) == (self.keep_top_fraction is None):
            raise ValueError(f"classifier {self.name}: set exactly one of threshold and keep_top_fraction")
        return self


class QualityModelConfig(Section):
    """The classifiers the stage applies, and the training settings of `crucible classifier train`."""

    classifiers: list[ClassifierRule] = Field(default_factory=list, description="Applied in this order.")
    train: ClassifierTrainConfig = Field(default_factory=ClassifierTrainConfig)

    def missing(self) -> str | None:
        return None if self.classifiers else "no classifiers"

    def fingerprint(self) -> dict[str, Any]:
        files = file_digests([c.model_path for c in self.classifiers], "prep.quality_model.classifiers")
        return self.model_dump(mode="json", exclude={"train"}) | {"files": files}


_SCORERS: dict[tuple[str, str], FastTextScorer] = {}


def _scorer(rule: ClassifierRule) -> FastTextScorer:
    """One loaded model per worker process and file."""
    key = (str(rule.model_path), rule.label)
    if key not in _SCORERS:
        _SCORERS[key] = FastTextScorer(rule.model_path, rule.label)
    return _SCORERS[key]


def _scores_file(score_folder: Path, task: int) -> Path:
    return score_folder / f"scores-{task:05d}.npy"


def score_texts(rules: list[ClassifierRule], texts: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Scores (documents x classifiers, float32) of `texts`."""
    prepared = model_text(texts)
    columns = [_scorer(rule).score(prepared) for rule in rules]
    return np.stack(columns, axis=1) if columns else np.zeros((len(prepared), 0), np.float32)


def run_score(ctx: TaskContext) -> dict[str, Any]:
    """Score one shard's documents with every classifier, in batches."""
    parquet = pq.ParquetFile(source_file(ctx))
    parts = [np.zeros((0, len(ctx.settings.classifiers)), np.float32)]
    for batch in parquet.iter_batches(batch_size=ctx.config.batch_size, columns=[TEXT]):
        parts.append(score_texts(ctx.settings.classifiers, batch.column(TEXT)))
        ctx.report(batch.num_rows)
    write_npy(_scores_file(ctx.folder, ctx.task), np.concatenate(parts))
    return {}


def top_cutoff(scores: np.ndarray, fraction: float) -> tuple[float, int] | None:
    """(score, corpus position) of the last document kept by a keep-top `fraction` rule; None keeps none."""
    keep = round(fraction * len(scores))
    if keep == 0:
        return None
    order = np.lexsort((np.arange(len(scores)), -scores.astype(np.float64)))  # best first, then corpus order
    last = int(order[keep - 1])
    return float(scores[last]), last


def run_cutoff(ctx: TaskContext) -> dict[str, Any]:
    """Find each keep-top classifier's cutoff over every shard's scores (one task)."""
    scores = np.concatenate([np.load(_scores_file(ctx.folder_of(SCORE), i)) for i in range(len(ctx.shards))])
    cutoffs = {
        rule.name: top_cutoff(scores[:, column], rule.keep_top_fraction)
        for column, rule in enumerate(ctx.settings.classifiers)
        if rule.keep_top_fraction is not None
    }
    write_json(ctx.folder / "cutoffs.json", cutoffs)
    ctx.report(len(scores))
    return {}


class ScoreFilter(DocStage):
    """Adds the scores of this shard (batches arrive in order) and drops rows below a classifier's bar."""

    name: ClassVar[str] = "quality_model"

    def __init__(
        self, rules: list[ClassifierRule], scores: np.ndarray, start: int, cutoffs: dict[str, list[float | int] | None]
    ) -> None:
        self.rules, self.scores, self.cutoffs = rules, scores, cutoffs
        self.start = start  # corpus position of this shard's first document
        self.offset = 0

    def passes(self, rule: ClassifierRule, scores: np.ndarray, positions: np.ndarray) -> np.ndarray:
        if rule.threshold is not None:
            return scores >= np.float32(rule.threshold)
        cutoff = self.cutoffs[rule.name]
        if cutoff is None:
            return np.zeros(len(scores), dtype=bool)
        best, last = np.float32(cutoff[0]), int(cutoff[1])
        return (scores > best) | ((scores == best) & (positions <= last))

    def decide(self, table: pa.Table) -> Decision:
        begin, self.offset = self.offset, self.offset + table.num_rows
        scores = self.scores[begin : self.offset]
        positions = self.start + begin + np.arange(table.num_rows)
        failed = np.full(table.num_rows, -1)  # the first classifier a document fails
        for column, rule in enumerate(self.rules):
            failed[(failed < 0) & ~self.passes(rule, scores[:, column], positions)] = column
        drops = {}
        for row in np.flatnonzero(failed >= 0).tolist():
            rule = self.rules[failed[row]]
            bar = (
                {"threshold": rule.threshold}
                if rule.threshold is not None
                else {"keep_top_fraction": rule.keep_top_fraction}
            )
            drops[row] = Drop(
                f"low_score_{rule.name}",
                {"classifier": rule.name, "score": round(float(scores[row, failed[row]]), 4)} | bar,
            )
        for column, rule in enumerate(self.rules):
            table = replace_column(table, f"score_{rule.name}", pa.array(scores[:, column], pa.float32()))
        return Decision(table, drops)


def run_filter(ctx: TaskContext) -> dict[str, Any]:
    cutoffs = json.loads((ctx.folder_of(CUTOFF) / "cutoffs.json").read_text())
    start = int(shard_offsets(ctx)[ctx.task])
    stage = ScoreFilter(ctx.settings.classifiers, np.load(_scores_file(ctx.folder_of(SCORE), ctx.task)), start, cutoffs)
    return run_stage_on_source(ctx, stage)


STAGE = StageSpec(
    "quality_model",
    QualityModelConfig,
    (
        StepSpec(".score", run_score),
        StepSpec(".cutoff", run_cutoff, tasks=single, reads=(SCORE,)),
        StepSpec("", run_filter, makes_docs=True, reads=(SCORE, CUTOFF)),
    ),
    default=False,
)
