"""A mixture by language through real trainer processes: a run stopped mid-epoch and resumed in a
new process (across two phase changes) draws the same rows and gives the same losses as an
uninterrupted run; validation loss per source/language in the loop, and `eval --heldout`
agreeing with the loop's validation loss."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, metrics, torchrun
from tests.test_languages import prep_languages
from training.hooks import Hook

pytestmark = pytest.mark.slow

TINY = [
    "model.d_model=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.n_kv_heads=1",
    "model.ffn_hidden=64",
    "train.global_batch_size=2",
    "train.micro_batch_size=1",
    "train.eval_interval=1000",
    "train.warmup_steps=2",
    "train.decay_steps=12",
    "train.peak_tflops=1",
    "train.mixture.weights={web/de: 0.4, web/fr: 0.1, web/es: 0.1, code: 0.4}",
    (
        "train.mixture.phases=[{start_step: 4, weights: {web: 0.8, code: 0.2}}, "
        "{start_step: 9, weights: {web/fr: 0.5, code/und: 0.5}}]"
    ),
]


class RecordRows(Hook):
    """Append each training micro-batch's global row indices, with its step, to `path` (validation
    batches, drawn by other loaders, leave the training loader's position as it was)."""

    def __init__(self, path: str) -> None:
        self.path, self.position = Path(path), None

    def on_batch(self, trainer: Any, batch: Any) -> Any:
        if trainer.loader.position != self.position:
            self.position = trainer.loader.position
            with open(self.path, "a") as handle:
                handle.write(json.dumps({"step": trainer.step + 1, "rows": batch.rows.tolist()}) + "\n")
        return batch


def train(shards: Path, run: Path, steps: int, rows_file: Path, *extra: str) -> list[dict]:
    hook = f'hooks=[{{target: "tests.test_mixture_resume:RecordRows", args: {{path: "{rows_file}"}}}}]'
    torchrun(
        1,
        "train",
        "--data",
        str(shards),
        "--output",
        str(run),
        *[a for key in [*TINY, f"train.max_steps={steps}", hook, *extra] for a in ("--set", key)],
    )
    return metrics(run)


def rows_by_step(path: Path) -> dict[int, list[int]]:
    steps: dict[int, list[int]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        steps.setdefault(record["step"], []).extend(record["rows"])
    return steps


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prep_languages(tmp_path_factory.mktemp("lang_in"), tmp_path_factory.mktemp("lang_out"), 12, 6)


def test_resume_in_a_new_process_continues_the_mixture_exactly(shards: Path, tmp_path: Path) -> None:
    straight = train(shards, tmp_path / "straight", 12, tmp_path / "straight.jsonl")
    train(shards, tmp_path / "split", 6, tmp_path / "first.jsonl")  # stops mid-epoch, between the phase changes
    resumed = train(shards, tmp_path / "split", 12, tmp_path / "second.jsonl")
    events = [json.loads(line) for line in (tmp_path / "split" / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "resume"] == [6]
    before, after, whole = (rows_by_step(tmp_path / f"{name}.jsonl") for name in ("first", "second", "straight"))
    assert sorted(after) == list(range(7, 13))
    assert {**before, **after} == whole
    losses = {r["step"]: r["loss"] for r in straight}
    assert [r["loss"] for r in resumed if r["step"] > 6] == [losses[s] for s in range(7, 13)]
    last = resumed[-1]
    assert last["mix/web/fr/target"] == pytest.approx(0.5) and last["mix/web/de/target"] == 0
    assert {k for k in last if k.startswith("mix/") and k.endswith("/tokens")} == {
        f"mix/{unit}/tokens" for unit in ("code/und", "web/de", "web/es", "web/fr")
    }
    for record in straight + resumed:  # real tokens per source add up to the run's tokens, across the resume too
        assert sum(v for k, v in record.items() if k.startswith("mix/") and k.endswith("/tokens")) == record["tokens"]


def test_heldout_perplexity_per_source_and_language_agrees_with_the_loop(shards: Path, tmp_path: Path) -> None:
    manifest = json.loads((shards / "manifest.json").read_text())
    val = manifest["splits"]["val"]
    run = tmp_path / "run"
    # One row per global batch and as many batches as validation rows: the loop's val_loss covers each row once.
    last = train(
        shards, run, 4, tmp_path / "rows.jsonl", "train.global_batch_size=1", f"train.eval_batches={val['sequences']}"
    )[-1]
    units = {f"web/{lang}" for lang in val["sources"]["web"]["languages"]} | {"code/und"}
    assert {k for k in last if k.startswith("val_loss/")} == {f"val_loss/{n}" for n in units | {"web", "code"}}
    output = tmp_path / "heldout.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "eval",
            "--checkpoint",
            str(run / "checkpoints" / "step-00000004"),
            "--heldout",
            "--output",
            str(output),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held-out loss at step 4" in result.stdout and "web/de" in result.stdout
    heldout = json.loads(output.read_text())["heldout"]
    assert set(heldout) == {"(all)", "web", "code"} | units
    assert heldout["(all)"]["loss"] == pytest.approx(last["val_loss"], rel=1e-5)
    for name, counts in val["sources"].items():
        assert heldout[name]["rows"] == counts["sequences"]
        for lang, by in counts["languages"].items():
            assert heldout[f"{name}/{lang}"]["rows"] == by["sequences"]
    for group, members in (("(all)", ["web", "code"]), ("web", sorted(u for u in units if u.startswith("web/")))):
        tokens = sum(heldout[m]["tokens"] for m in members)
        assert heldout[group]["tokens"] == tokens
        assert heldout[group]["loss"] == pytest.approx(
            sum(heldout[m]["loss"] * heldout[m]["tokens"] for m in members) / tokens, rel=1e-9
        )
    sampled = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "eval",
            "--checkpoint",
            str(run / "checkpoints" / "step-00000004"),
            "--heldout",
            "--heldout-rows",
            "3",
            "--output",
            str(tmp_path / "sampled.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    assert {name: r["rows"] for name, r in json.loads((tmp_path / "sampled.json").read_text())["heldout"].items()} == {
        name: min(3, r["rows"]) for name, r in heldout.items()
    }
