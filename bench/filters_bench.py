"""Model-based and list filters: docs/s of the quality_model and decontaminate stages beside baselines.

quality_model: a classifier is trained with `crucible classifier train` (English prose and docs
as positives, Debian changelogs as negatives; the model stays in a temporary folder), then the
stage's scoring (text folding, batch predict, scores) runs on the mix beside fastText's raw
batch `predict` on the same, already folded, texts. decontaminate: eval items are passages of
English documents; the stage's filter runs beside datatrove's `NGramsDecontFilter` with an
index of the same items made with datatrove's own hashing (its indexer needs lighteval and
network access; its `compute_hashes` does not). Both sides run single-core in this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Result, base_parser, best_times, print_json, print_table, rate, read_jsonl, write_jsonl  # noqa: E402
from data_prep.classifier import FastTextScorer, model_text  # noqa: E402
from data_prep.decontaminate import ContaminationFilter, DecontaminateConfig, EvalSet, run_index  # noqa: E402
from data_prep.quality_model import ClassifierRule, score_texts  # noqa: E402
from data_prep.stage import TaskContext  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MIX_FILES = ("english.jsonl", "multilingual.jsonl", "neardup.jsonl")
MIX = "mix (english+multilingual+neardup)"
BATCH = 1000
NGRAM = 13


def batches(texts: list[str]) -> list[pa.Array]:
    return [pa.array(texts[i : i + BATCH], pa.string()) for i in range(0, len(texts), BATCH)]


def bench_quality_model(data: Path, work: Path, repeat: int) -> list[Result]:
    model_dir = work / "classifier"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "classifier",
            "train",
            "--positive",
            str(data / "english.jsonl"),
            "--negative",
            str(data / "debian_changelogs_pii.jsonl"),
            "--output",
            str(model_dir),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"classifier training failed: {result.stderr[-2000:]}")
    held = json.loads((model_dir / "report.json").read_text())["heldout"]
    texts = [r["text"] for name in MIX_FILES for r in read_jsonl(data / name)]
    rule = ClassifierRule(name="hq", model_path=model_dir / "model.bin", threshold=0.5)
    arrays = batches(texts)
    folded = [model_text(a) for a in arrays]
    raw = FastTextScorer(rule.model_path, rule.label).model

    def ours() -> int:
        return sum(len(score_texts([rule], a)) for a in arrays)

    def fasttext_predict() -> int:
        return sum(len(raw.predict(t, k=1)[0]) for t in folded)

    (mine, theirs), _ = best_times([ours, fasttext_predict], repeat)
    note = (
        f"classifier held-out: accuracy {held['accuracy']}, AUC {held['auc']}, precision {held['precision']}, "
        f"recall {held['recall']} on {held['documents']} documents"
    )
    return [
        Result(
            "quality_model: scoring",
            MIX,
            len(texts),
            "docs/s",
            rate(len(texts), mine),
            "fastText predict(k=1), folded texts",
            rate(len(texts), theirs),
            0.7,
            note,
        )
    ]


def datatrove_index(items: list[str], folder: Path) -> Any:
    """datatrove's filter over an index of `items` hashed exactly as its indexer hashes labels."""
    from datatrove.pipeline.decont.n_grams import NGramsDecontConfig, NGramsDecontFilter
    from datatrove.utils.hashing import HashConfig, create_hash_func
    from datatrove.utils.text import ngrams, simplify_text
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    # SHA-1 hashes: datatrove's default xxhash path passes str, which xxhash 4 refuses.
    config = NGramsDecontConfig(n_grams=NGRAM, hash_config=HashConfig(precision=64, hash_fc="sha1"))
    hash_func, tokenizer = create_hash_func(config.hash_config), load_word_tokenizer("en")
    hashes = {
        hash_func(" ".join(gram))
        for item in items
        for gram in ngrams(tokenizer.word_tokenize(simplify_text(item, config.norm_config)), NGRAM)
    }
    folder.mkdir(parents=True, exist_ok=True)
    np.array(sorted(hashes), dtype=config.hash_config.np_descr).tofile(folder / "evalset.index.hashes")
    return NGramsDecontFilter(str(folder), config=config)


def bench_decontaminate(data: Path, work: Path, repeat: int) -> list[Result]:
    from datatrove.data import Document

    english = read_jsonl(data / "english.jsonl")
    items = [" ".join(r["text"].split()[50:110]) for r in english[::10]]
    eval_file = write_jsonl(work / "evalset.jsonl", [{"id": str(i), "text": t} for i, t in enumerate(items)])
    config = DecontaminateConfig(eval_sets=[EvalSet(path=eval_file)], ngram=NGRAM)
    ctx = TaskContext(
        config=None,
        shards=(),
        work=work,
        stage="decontaminate",
        settings=config,  # type: ignore[arg-type]
        step="decontaminate.index",
        source=None,
        task=0,
        report=lambda n: None,
    )
    run_index(ctx)
    ours_filter = ContaminationFilter(config, ctx.folder)
    texts = [r["text"] for name in MIX_FILES for r in read_jsonl(data / name)]
    tables = [pa.table({"id": [str(i) for i in range(len(a))], "text": a}) for a in batches(texts)]
    theirs_filter = datatrove_index(items, work / "datatrove-index")
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    theirs_filter.filter(Document(text="warm up", id="x"))  # loads its index outside the timing

    def ours() -> int:
        return sum(len(ours_filter.decide(t).drops) for t in tables)

    def datatrove() -> int:
        return sum(theirs_filter.filter(d) is not True for d in docs)

    (mine, theirs), (found, found_dt) = best_times([ours, datatrove], repeat)
    note = f"{len(items)} eval items of 60 words; contaminated documents found: ours {found}, datatrove {found_dt}"
    return [
        Result(
            "decontaminate: filter",
            MIX,
            len(texts),
            "docs/s",
            rate(len(texts), mine),
            "datatrove NGramsDecontFilter",
            rate(len(texts), theirs),
            None,
            note,
        )
    ]


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        results = bench_quality_model(args.data, work, args.repeat)
        try:
            results += bench_decontaminate(args.data, work, args.repeat)
        except ImportError as exc:
            print(f"decontaminate: skipped, datatrove unavailable ({exc}); install the bench extra")
    print_table("filters (single core)", results)
    print_json("filters", results)


if __name__ == "__main__":
    main()
