"""Named sources through prep: per-source lineage, stats and accounting, per-source stage settings,
cross-source dedupe by priority and source-tagged shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_prep.exact_dedup import first_occurrences
from data_prep.minhash.kernels import choose_removals
from data_prep.quality import QualityConfig, QualityStage
from pipeline.config import ConfigError, load_config
from pipeline.prep import run_prep
from pipeline.report import build_report
from tests.conftest import crucible_in_process, metrics, read_set, write_jsonl
from tests.test_prep_pipeline import read_dir

STAGES = "prep.stages=[normalize, exact_dedup, minhash_dedup, quality, tokenize, pack]"
WEB_SHORT = "y = 2\nprint(y)\n"  # too few words for the quality rules
CODE_SHORT = "x = 1\nprint(x)\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    """Four sources: web (first in input order, lower priority) holds an exact and a longer near copy
    of two books documents, a malformed line and a short text; code skips quality; short caps words."""
    folder = tmp_path_factory.mktemp("sources_in")
    english = [{"id": r["id"], "text": r["text"]} for r in read_set("english", 130)]
    books, web, short = english[:40], english[40:100], english[100:110]
    rules = QualityStage(QualityConfig())
    books.sort(key=lambda r: rules.check(r["text"]) is not None)  # the planted originals pass quality
    exact = {"id": "web/exact-copy", "text": books[0]["text"]}
    near = {"id": "web/near-copy", "text": books[1]["text"] + " And a closing sentence that only the web copy has."}
    write_jsonl(folder / "web" / "web.jsonl", [exact, near, *web, {"id": "web/short", "text": WEB_SHORT}])
    with open(folder / "web" / "web.jsonl", "a") as handle:
        handle.write('{"id": "web/broken", "text": \n')
    write_jsonl(folder / "books" / "books.jsonl", books)
    write_jsonl(folder / "code" / "code.jsonl", [*english[110:130], {"id": "code/short", "text": CODE_SHORT}])
    write_jsonl(folder / "short" / "short.jsonl", short)
    sources = [
        {"name": "web", "inputs": [str(folder / "web")]},
        {"name": "books", "inputs": [str(folder / "books")], "priority": 5},
        {"name": "code", "inputs": [str(folder / "code")], "skip": ["quality"]},
        {"name": "short", "inputs": [str(folder / "short")], "settings": {"quality": {"max_words": 50}}},
    ]
    config = load_config(
        None,
        [
            STAGES,
            f"prep.sources={json.dumps(sources)}",
            "prep.tokenizer.vocab_size=600",
            "prep.pack.seq_len=64",
            "prep.pack.val_fraction=0.1",
            "prep.workers=1",
        ],
    )
    output = tmp_path_factory.mktemp("sources_out")
    stats = run_prep(config.prep, output, show_progress=False)
    return output, stats, {"books": books, "web": web}


def test_cross_source_copies_keep_the_higher_priority_source(run: tuple[Path, dict, dict]) -> None:
    output, _, docs = run
    clean = {r["id"]: r for r in read_dir(output / "clean")}
    books = docs["books"]
    assert books[0]["id"] in clean and books[1]["id"] in clean  # kept though web's copies came first
    assert "web/exact-copy" not in clean and "web/near-copy" not in clean  # and the near one was longer
    dropped = {r["id"]: r for r in read_dir(output / "dropped")}
    exact, near = json.loads(dropped["web/exact-copy"]["detail"]), json.loads(dropped["web/near-copy"]["detail"])
    assert dropped["web/exact-copy"]["reason"] == "exact_duplicate" and exact["duplicate_of"] == books[0]["id"]
    assert dropped["web/near-copy"]["reason"] == "near_duplicate" and near["duplicate_of"] == books[1]["id"]
    assert exact["source"] == near["source"] == "web"


def test_keep_rules_take_the_priority_first_then_their_own_rule() -> None:
    hashes = np.array([[1, 1], [2, 2], [1, 1], [1, 1]], dtype=np.uint64)
    assert first_occurrences(hashes).tolist() == [0, 1, 0, 0]
    assert first_occurrences(hashes, np.array([0, 0, 3, 3])).tolist() == [2, 1, 2, 2]  # first of the top ones
    roots, lengths, ids = np.zeros(3, np.int64), np.array([90, 50, 70]), ["a", "b", "c"]
    assert choose_removals(roots, lengths, ids)[1].tolist() == [0, 0, 0]  # longest
    assert choose_removals(roots, lengths, ids, np.array([0, 1, 1]))[1].tolist() == [2, 2, 2]  # longest of the top


def test_every_lineage_record_names_its_source(run: tuple[Path, dict, dict]) -> None:
    output, _, _ = run
    dropped, quarantined = read_dir(output / "dropped"), read_dir(output / "quarantine")
    assert dropped and quarantined
    for record in dropped + quarantined:
        assert json.loads(record["detail"])["source"] in ("web", "books", "code", "short"), record
    (broken,) = [r for r in quarantined if r["reason"] == "malformed_json"]
    assert json.loads(broken["detail"])["source"] == "web"
    assert {r["id"] for r in read_dir(output / "clean") if r["source"] == "web"} <= {
        r["id"] for r in read_set("english", 130)
    } | {"web/short"}


def test_stats_count_per_source_and_the_books_balance_per_source(run: tuple[Path, dict, dict]) -> None:
    output, stats, _ = run
    assert stats.to_json() == (output / "stats.json").read_text()
    for stage in stats.stages:
        per_source = stage.sources or {}
        assert sum(s.docs_in for s in per_source.values()) == stage.docs_in, stage.name
        assert sum(s.docs_out for s in per_source.values()) == stage.docs_out, stage.name
        for name, counts in per_source.items():
            assert counts.docs_in == counts.docs_out + counts.removed(), (stage.name, name)
    for before, after in zip(stats.stages, stats.stages[1:]):
        assert before.sources and after.sources
        assert all(after.sources[n].docs_in == before.sources[n].docs_out for n in before.sources)
    summary = stats.sources or {}
    assert {n: s["docs_in"] for n, s in summary.items()} == {"web": 64, "books": 40, "code": 21, "short": 10}
    clean = read_dir(output / "clean")
    assert {n: s["docs_out"] for n, s in summary.items()} == {n: sum(r["source"] == n for r in clean) for n in summary}
    for counts in summary.values():
        assert counts["docs_in"] == counts["docs_out"] + counts["dropped"] + counts["quarantined"]


def test_per_source_stage_settings(run: tuple[Path, dict, dict]) -> None:
    output, stats, _ = run
    clean_ids = {r["id"] for r in read_dir(output / "clean")}
    dropped = {r["id"]: r for r in read_dir(output / "dropped")}
    assert "code/short" in clean_ids  # code skips quality
    assert dropped["web/short"]["reason"] == "too_few_words"  # the same kind of text elsewhere does not
    quality = stats.stage("quality").sources or {}
    assert quality["code"].docs_in == quality["code"].docs_out
    assert quality["short"].docs_out == 0 and set(quality["short"].dropped) == {"too_many_words"}
    assert all(
        json.loads(r["detail"])["threshold"] == 50
        for r in dropped.values()
        if json.loads(r["detail"])["source"] == "short"
    )


def test_shards_are_tagged_by_source_and_the_manifest_counts_per_source(run: tuple[Path, dict, dict]) -> None:
    output, stats, _ = run
    manifest = json.loads((output / "shards" / "manifest.json").read_text())
    for split in ("train", "val"):
        entry = manifest["splits"][split]
        assert all(shard["source"] in ("web", "books", "code") for shard in entry["shards"])
        for key in ("documents", "tokens", "sequences"):
            assert sum(s[key] for s in entry["sources"].values()) == entry[key], (split, key)
        for name, counts in entry["sources"].items():
            assert counts["sequences"] == sum(s["sequences"] for s in entry["shards"] if s["source"] == name)
            assert stats.sources[name][f"{split}_tokens"] == counts["tokens"]


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ([{"name": "a", "inputs": ["x"]}, {"name": "a", "inputs": ["y"]}], "names must be distinct"),
        ([{"name": "a", "inputs": ["x"], "skip": ["tokenize"]}], "'tokenize' is not a per-document stage"),
        (
            [{"name": "a", "inputs": ["x"], "settings": {"quality": {"min_wrds": 3}}}],
            "sources.a.settings.quality: min_wrds",
        ),
        ([{"name": "a b", "inputs": ["x"]}], "source name 'a b'"),
    ],
)
def test_source_config_mistakes_name_the_key(sources: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"prep.sources={json.dumps(sources)}"])
    with pytest.raises(ConfigError, match="'source' is the column prep.sources sets"):
        load_config(None, ['prep.sources=[{"name": "a", "inputs": ["x"]}]', "prep.read.keep_fields=[source]"])


def test_training_logs_realized_tokens_and_validation_loss_per_source(
    run: tuple[Path, dict, dict], tmp_path: Path
) -> None:
    output, _, _ = run
    weights = "train.mixture.weights={web: 0.5, books: 0.3, code: 0.2}"
    tiny = [
        "model.d_model=32",
        "model.n_layers=1",
        "model.n_heads=2",
        "model.n_kv_heads=1",
        "model.ffn_hidden=64",
        "train.global_batch_size=2",
        "train.micro_batch_size=2",
        "train.max_steps=4",
        "train.eval_interval=4",
        "train.eval_batches=1",
        "checkpoint.enabled=false",
        weights,
    ]
    result = crucible_in_process(
        "train",
        "--data",
        str(output / "shards"),
        "--output",
        str(tmp_path / "run"),
        *[a for key in tiny for a in ("--set", key)],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    last = metrics(tmp_path / "run")[-1]
    assert sum(last[f"mix/{name}/tokens"] for name in ("web", "books", "code")) == last["tokens"]
    assert last["mix/books/target"] == pytest.approx(0.3)
    assert {k for k in last if k.startswith("val_loss/")} == {f"val_loss/{name}" for name in ("web", "books", "code")}
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    (report_dir / "data").symlink_to(output)
    (report_dir / "train").symlink_to(tmp_path / "run")
    build_report(report_dir)
    report = (report_dir / "report.md").read_text()
    assert "## Data mixture" in report and (report_dir / "mixture.png").exists()
    assert f"| books | {last['mix/books/tokens']:,} |" in report
    assert "Documents left after each stage, per source:" in report
    plan = crucible_in_process(
        "plan",
        "--data",
        str(output / "shards"),
        "--set",
        "plan.token_budget=1e7",
        "--set",
        "train.mixture.max_epochs={books: 1}",
        *[a for key in tiny for a in ("--set", key)],
    )
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "warning: source books would be drawn" in plan.stdout and "over its cap of 1 epochs" in plan.stdout
