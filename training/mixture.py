"""Data mixtures: target token fractions per named source (or language), phases by step and a repetition cap.

`train.mixture` gives each source of the shards (prep's `prep.sources`) a target fraction of the
training tokens, directly (`weights`) or as a temperature over the sources' natural sizes
(weight ~ tokens^alpha, as multilingual models do). `phases` switch to another mix from a
given step (e.g. the last 10% of steps at a higher-quality mix), inside the same run.

Shards packed by language (`prep.pack.split_by_language`) are mixed per language within a
source: the mixed units are `source/language` (`web/de`; a bare `de` without named sources).
A key may name a unit or a whole source; a source's weight is shared among its languages in
proportion to their tokens, and `temperature_over: language` weighs each unit by its own size.

Which source fills global row slot g is a pure function of g: the golden-ratio (Kronecker)
sequence u_g = frac(g * phi + offset), mapped through the cumulative weights of the phase that
slot's step is in. The sequence is equidistributed with low discrepancy, so over any stretch of
N rows each source's count is within a few rows of N x its weight, with no state and no
dependence on the number of ranks; it is done in exact 64-bit integer arithmetic. Every row
has seq_len slots, so the weights are fractions of rows, which are token fractions up to padding:
the logged `mix/<source>/tokens` count real tokens only (as `tokens` does), so a source whose
rows carry more `best_fit` padding shows a realized share a little below its target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline.ground.errors import UserError
from pipeline.ground.hashing import hash64
from pipeline.ground.schema import Section

GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio, odd: slot g maps to g * GOLDEN mod 2**64
ALL = "*"
CHUNK_SLOTS = 1 << 20  # slots counted at a time when checking a whole run


class MixturePhase(Section):
    """A later mix: from `start_step` (or `start_fraction` of train.max_steps) on, these weights."""

    start_step: int | None = Field(None, ge=2, description="First step of this phase (steps count from 1, as logged).")
    start_fraction: float | None = Field(
        None, gt=0, lt=1, description="...or the fraction of train.max_steps where it starts (0.9: the last 10%)."
    )
    weights: dict[str, float] = Field(default_factory=dict, description="Target token fraction per source.")
    temperature: float | None = Field(None, ge=0, description="...or weight ~ source tokens^temperature.")

    @model_validator(mode="after")
    def _one_of_each(self) -> MixturePhase:
        if (self.start_step is None) == (self.start_fraction is None):
            raise ValueError("give a phase either start_step or start_fraction")
        _check_weights(self.weights, self.temperature)
        return self


class MixtureConfig(Section):
    """Target token fractions of the named sources, phases and the repetition cap."""

    weights: dict[str, float] = Field(
        default_factory=dict,
        description="Target token fraction per source or source/language (normalized to sum 1; absent: 0).",
    )
    temperature: float | None = Field(
        None, ge=0, description="...or weight ~ source tokens^temperature (1: natural sizes, 0: uniform)."
    )
    temperature_over: Literal["source", "language"] = Field(
        "source",
        description="What a temperature weighs by size: whole sources, or each language of a source "
        "(shards packed with prep.pack.split_by_language).",
    )
    max_epochs: dict[str, float] = Field(
        default_factory=dict,
        description="Repetition cap: at most this many "
        "epochs of a source/language, of each "
        "language of a source, or ('*') of each.",
    )
    phases: list[MixturePhase] = Field(default_factory=list, description="Later mixes, by step.")

    @model_validator(mode="after")
    def _valid(self) -> MixtureConfig:
        _check_weights(self.weights, self.temperature)
        bad = {k: v for k, v in self.max_epochs.items() if not v > 0}
        if bad:
            raise ValueError(f"max_epochs must be positive: {bad}")
        return self


def _check_weights(weights: dict[str, float], temperature: float | None) -> None:
    if bool(weights) == (temperature is not None):
        raise ValueError("give either weights (per source) or a temperature")
    if any(w < 0 for w in weights.values()) or (weights and sum(weights.values()) <= 0):
        raise ValueError(f"weights must be >= 0 with a positive sum: {weights}")


def source_key(name: str) -> int:
    """A stable seed part per source name: adding a source leaves the others' orders as they were."""
    return hash64(name)


@dataclass(frozen=True)
class Schedule:
    """The resolved mixture: per phase, its first step and one weight per source (summing to 1)."""

    sources: tuple[str, ...]
    starts: tuple[int, ...]  # first step of each phase, increasing, starts[0] == 0
    weights: np.ndarray  # [phases, sources]
    offset: np.uint64  # from the seed: where the golden-ratio sequence starts
    thresholds: tuple[np.ndarray, ...]  # per phase, cumulative weights as uint64 bounds: source k owns [T[k-1], T[k])

    def phase(self, step: int) -> int:
        return int(np.searchsorted(self.starts, step, side="right") - 1)

    def sources_of(self, first_slot: int, count: int, rows_per_step: int) -> np.ndarray:
        """The source index of each global row slot first_slot .. first_slot + count - 1."""
        slots = np.arange(first_slot, first_slot + count, dtype=np.uint64)
        u = slots * GOLDEN + self.offset  # wraps modulo 2**64: the fractional part of g * phi + offset
        phases = np.searchsorted(self.starts, slots // np.uint64(rows_per_step), side="right") - 1
        out = np.empty(count, dtype=np.int64)
        for phase in np.unique(phases).tolist():
            mask = phases == phase
            out[mask] = np.searchsorted(self.thresholds[phase], u[mask], side="right")
        return out

    def expected_rows(self, steps: int, rows_per_step: int) -> np.ndarray:
        """Rows of each source the first `steps` steps are meant to draw (weights x rows, per phase)."""
        ends = [*self.starts[1:], max(steps, self.starts[-1])]
        spans = np.array([max(0, min(end, steps) - start) for start, end in zip(self.starts, ends)])
        return (spans[:, None] * rows_per_step * self.weights).sum(axis=0)


def group_of(unit: str) -> str:
    """The source a mixed unit belongs to: `web` of `web/de`; a unit without a language is its own group."""
    return unit.split("/", 1)[0]


def _unit_weights(
    key: str, weights: dict[str, float], temperature: float | None, over: str, unit_tokens: dict[str, int]
) -> np.ndarray:
    """One weight per unit (sorted), from keys naming units or whole sources; a source's share is split
    among its languages by their tokens."""
    units = sorted(unit_tokens)
    groups = sorted({group_of(u) for u in units})
    known = sorted({*units, *groups})
    unknown = sorted(set(weights) - set(known))
    if unknown:
        raise UserError(
            f"{key}.weights: no source {', '.join(unknown)} in the shards "
            f"(sources: {', '.join(known) or 'none: prep without prep.sources'})"
        )
    both = sorted(
        g for g in set(weights) & set(groups) if any(group_of(u) == g and u != g and u in weights for u in units)
    )
    if both:
        raise UserError(
            f"{key}.weights: {', '.join(both)} is given both whole and by language; give a source "
            f"either as a whole or as its source/language keys"
        )
    tokens = np.array([float(unit_tokens[u]) for u in units])
    group_tokens = {g: sum(unit_tokens[u] for u in units if group_of(u) == g) for g in groups}
    within = np.array(
        [tokens[i] / group_tokens[group_of(u)] if group_tokens[group_of(u)] else 0.0 for i, u in enumerate(units)]
    )  # a unit's share of its source's tokens
    if temperature is not None and over == "language":
        return np.array([t**temperature if t else 0.0 for t in tokens])
    if temperature is not None:
        return np.array(
            [
                float(group_tokens[group_of(u)]) ** temperature * within[i] if group_tokens[group_of(u)] else 0.0
                for i, u in enumerate(units)
            ]
        )
    return np.array(
        [weights[u] if u in weights else weights.get(group_of(u), 0.0) * within[i] for i, u in enumerate(units)]
    )


def resolve(config: MixtureConfig, source_tokens: dict[str, int], max_steps: int, seed: int) -> Schedule:
    """The schedule for shards holding `source_tokens` (train tokens per mixed unit: a source, or a
    source/language); errors name the key."""
    sources = tuple(sorted(source_tokens))
    phases = [(0, config.weights, config.temperature)]
    for phase in config.phases:
        # 0-based step indices: start_step counts steps as the logs do (from 1), start_fraction of max_steps
        if phase.start_step is not None:
            start = phase.start_step - 1
        else:
            assert phase.start_fraction is not None  # a phase gives one of the two (MixturePhase checks it)
            start = round(phase.start_fraction * max_steps)
        phases.append((start, phase.weights, phase.temperature))
    starts = [start for start, _, _ in phases]
    if starts != sorted(starts) or len(set(starts)) != len(starts):
        raise UserError(
            f"train.mixture.phases: phases start at steps {[s + 1 for s in starts[1:]]}; they must increase"
        )
    rows = []
    for i, (_, weights, temperature) in enumerate(phases):
        key = "train.mixture" + (f".phases.{i - 1}" if i else "")
        raw = _unit_weights(key, weights, temperature, config.temperature_over, source_tokens)
        empty = [s for s, w in zip(sources, raw) if w > 0 and source_tokens[s] == 0]
        if empty or raw.sum() <= 0:
            raise UserError(f"{key}: source {', '.join(empty or sources)} has no training tokens in the shards")
        rows.append(raw / raw.sum())
    offset = np.uint64(source_key(f"mixture:{seed}"))
    thresholds = tuple(
        np.array([min(int(c * 2**64), 2**64 - 1) for c in np.cumsum(row)[:-1]], dtype=np.uint64) for row in rows
    )
    return Schedule(sources, tuple(starts), np.array(rows), offset, thresholds)


def caps(config: MixtureConfig, sources: tuple[str, ...]) -> np.ndarray:
    """Epochs allowed per unit (inf: no cap): its own key, else its source's, else '*'; unknown names
    are a config mistake."""
    known = sorted({*sources, *(group_of(s) for s in sources)})
    unknown = sorted(set(config.max_epochs) - set(known) - {ALL})
    if unknown:
        raise UserError(
            f"train.mixture.max_epochs: no source {', '.join(unknown)} in the shards (sources: {', '.join(known)})"
        )
    default = config.max_epochs.get(ALL, np.inf)
    return np.array(
        [config.max_epochs.get(s, config.max_epochs.get(group_of(s), default)) for s in sources], dtype=float
    )


def check_repetition(
    schedule: Schedule, source_rows: np.ndarray, epochs_allowed: np.ndarray, max_steps: int, rows_per_step: int
) -> None:
    """Refuse, before training, a run that would draw more than its cap from a source: the exact
    rows the schedule draws are counted, so the message says which source runs out and at what step."""
    if np.isinf(epochs_allowed).all():
        return
    allowed = np.floor(epochs_allowed * source_rows)
    drawn = np.zeros(len(source_rows), dtype=np.int64)
    total = max_steps * rows_per_step
    for first in range(0, total, CHUNK_SLOTS):
        chosen = schedule.sources_of(first, min(CHUNK_SLOTS, total - first), rows_per_step)
        counts = np.bincount(chosen, minlength=len(drawn))
        over = np.flatnonzero(drawn + counts > allowed)
        if len(over):
            problems = []
            for s in over.tolist():
                slot = first + int(np.flatnonzero(chosen == s)[int(allowed[s] - drawn[s])])
                needed = schedule.expected_rows(max_steps, rows_per_step)[s] / source_rows[s]
                problems.append(
                    f"source {schedule.sources[s]!r} ({int(source_rows[s]):,} rows) runs out of its "
                    f"{epochs_allowed[s]:g} epoch(s) at step {slot // rows_per_step + 1:,} of {max_steps:,}; "
                    f"the mixture would draw {needed:.2f} epochs of it"
                )
            raise UserError(
                "train.mixture: " + "; ".join(problems) + ". Lower its weight, raise "
                "train.mixture.max_epochs, add data or train fewer steps"
            )
        drawn += counts


def plan_epochs(
    config: MixtureConfig, source_rows: dict[str, int], source_tokens: dict[str, int], steps: int, rows_per_step: int
) -> list[dict[str, Any]]:
    """For `plan`: per source, its rows, the fraction of the run it fills, the epochs drawn and its cap."""
    schedule = resolve(config, source_tokens, steps, seed=0)
    rows = np.array([source_rows[s] for s in schedule.sources], dtype=float)
    expected = schedule.expected_rows(steps, rows_per_step)
    allowed = caps(config, schedule.sources)
    return [
        {
            "source": s,
            "rows": int(n),
            "share": float(e / max(1, expected.sum())),
            "epochs": float(e / n) if n else float("inf"),
            "max_epochs": float(cap),
        }
        for s, n, e, cap in zip(schedule.sources, rows, expected, allowed)
    ]
