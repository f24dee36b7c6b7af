"""Data-prep throughput: each stage's docs/s beside its raw kernel, and MinHash beside datatrove.

Every stage runs single-core in this process on Arrow batches, as a prep worker runs it, beside
the bare library call that does its core job on the same texts (NFC, BLAKE2b, datasketch,
fastText) or beside datatrove's equivalent step. The whole prep runs through `run_prep` with
two workers beside datatrove's four MinHash steps on the same input. Only ratios are compared
with the team's aims; nothing is asserted. See bench/README.md for what each row means.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from common import (
    Result,
    base_parser,
    best_time,
    best_times,
    corpus_file,
    data_dir,
    print_json,
    print_table,
    profile_call,
    rate,
    read_jsonl,
    write_jsonl,
)

if TYPE_CHECKING:
    from pipeline.prep_stats import PrepStats

SECTIONS = ("normalize", "exact_dedup", "minhash", "langid", "pii", "quality", "prep")
DOC_STAGES = ["normalize", "exact_dedup", "minhash_dedup", "langid", "pii", "quality"]
MIX_FILES = ("english.jsonl", "multilingual.jsonl", "neardup.jsonl")
MIX = "mix (english+multilingual+neardup)"
BATCH = 1000  # documents per Arrow batch, as prep.batch_size defaults to
# 1 MB lines that repeat one fragment a pattern consumes ("a.", "1 ", "://a:", " dot ", "password=", ...): a
# pattern that backtracks shows as a slow line. Throughput on the slowest is compared with the mix's.
HOSTILE_FRAGMENTS = (
    "a",
    "a.",
    "a@a.",
    "1.",
    "1 ",
    "01 ",
    "://a:",
    "://a:b@",
    "password=",
    "pwd:'a",
    ":",
    " dot ",
    "a dot ",
    "a at b dot ",
    "a [at] b [dot] ",
    "a(a)",
    "(020) ",
    "+1 ",
    "GB12 ",
    ">a",
    "a:",
    "::",
    "ffff:1.",
    "a @ b.",
    "Authorization: Basic A",
    "xoxb-",
    "-----BEGIN PRIVATE KEY-----\nA",
)
HOSTILE_CHARS = 1_000_000  # characters
QUALITY_EVERY = 8  # datatrove's Gopher filters manage ~30 docs/s on this text: a spread-out sample
PREP_EVERY = 2  # the whole-prep comparison takes 1 in 2 mix documents, to fit in a few minutes


def datatrove_missing() -> str | None:
    """Why datatrove's steps cannot run here, or None when they can."""
    try:
        import datatrove.pipeline.dedup  # noqa: F401  (pulls in its text utilities)
        import spacy  # noqa: F401  (its English word tokenizer)
    except ImportError as exc:
        return f"datatrove unavailable ({exc}); install the bench extra"
    return None


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Keep datatrove's per-task logging (its child processes' too) off the terminal; on an
    error, show its tail, which holds the reason."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            sink.seek(0)
            print(sink.read()[-4000:].decode(errors="replace"), file=sys.stderr)
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def docs_table(records: list[dict[str, Any]], **extra: list[Any]) -> pa.Table:
    return pa.table({"id": [str(r["id"]) for r in records], "text": [r["text"] for r in records]} | extra)


def batches(table: pa.Table) -> list[pa.Table]:
    return [table.slice(start, BATCH) for start in range(0, table.num_rows, BATCH)]


@dataclass
class Bench:
    data: Path
    repeat: int
    pipeline_repeat: int
    profile: bool
    work: Path

    def corpus(self, name: str, every: int = 1) -> list[dict[str, Any]]:
        return read_jsonl(corpus_file(self.data, name), every)

    @cached_property
    def mix(self) -> list[dict[str, Any]]:
        return [{"id": r["id"], "text": r["text"]} for name in MIX_FILES for r in self.corpus(name)]

    def compare(
        self, label: str, ours: Callable[[], Any], *baselines: Callable[[], Any]
    ) -> tuple[list[float], list[Any]]:
        """Best seconds (and last results) of Crucible's side and the baselines, run in turn;
        with --profile, Crucible's side once more under cProfile."""
        seconds, results = best_times([ours, *baselines], self.repeat)
        if self.profile:
            profile_call(ours, label)
        return seconds, results

    def fresh_dir(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.work))


# ---- per-stage kernels, single core, in this process ---------------------------------------


def bench_normalize(b: Bench) -> list[Result]:
    from data_prep.normalize import CONTROL, JUNK, NormalizeConfig, NormalizeStage

    texts, parts = [r["text"] for r in b.mix], batches(docs_table(b.mix))
    stage = NormalizeStage(NormalizeConfig())
    control, junk = re.compile(CONTROL), re.compile(JUNK)

    def plain() -> list[tuple[int, int, bool]]:  # the stage's checks and rewrites, one text at a time
        out = []
        for text in texts:
            found = len(junk.findall(text))
            text = unicodedata.normalize("NFC", control.sub("", text.replace("\r\n", "\n")))
            out.append((len(text), found, not text.strip()))
        return out

    (ours, raw, same), _ = b.compare(
        "normalize",
        lambda: [stage.decide(batch) for batch in parts],
        lambda: [unicodedata.normalize("NFC", t) for t in texts],
        plain,
    )
    n, name = len(texts), "normalize: NormalizeStage.decide"
    return [
        Result(
            name,
            MIX,
            n,
            "docs/s",
            rate(n, ours),
            'unicodedata.normalize("NFC")',
            rate(n, raw),
            0.7,
            "CPython returns an ASCII string from NFC without reading it",
        ),
        Result(
            name,
            MIX,
            n,
            "docs/s",
            rate(n, ours),
            "the same work in plain Python (re, unicodedata)",
            rate(n, same),
            None,
        ),
    ]


def bench_exact(b: Bench) -> list[Result]:
    from data_prep.exact_dedup import ExactDedupConfig, text_hashes

    texts, table, cfg = [r["text"] for r in b.mix], docs_table(b.mix), ExactDedupConfig()
    space = re.compile(r"[\t\n\f\r ]+")  # what `\s` matches in Arrow's regex engine (RE2)

    def plain() -> list[bytes]:
        return [hashlib.blake2b(space.sub(" ", t).strip().encode(), digest_size=16).digest() for t in texts]

    (ours, raw, same), _ = b.compare(
        "exact_dedup",
        lambda: text_hashes(table, cfg),
        lambda: [hashlib.blake2b(t.encode(), digest_size=16).digest() for t in texts],
        plain,
    )
    n, name = len(texts), "exact_dedup: text_hashes"
    return [
        Result(name, MIX, n, "docs/s", rate(n, ours), "hashlib.blake2b(text)", rate(n, raw), 0.7),
        Result(
            name, MIX, n, "docs/s", rate(n, ours), "whitespace collapse + blake2b in plain Python", rate(n, same), None
        ),
    ]


_WORD = re.compile(r"\w+")


def datasketch_signatures(texts: list[str], ngram: int, num_perm: int, seed: int) -> list[Any]:
    """The plain way: lower-cased `\\w+` words, n-grams joined by spaces, `update_batch`.
    Permutations are made once and shared, as any bulk user of datasketch would."""
    from datasketch import MinHash

    shared = MinHash(num_perm=num_perm, seed=seed).permutations
    sketches = []
    for text in texts:
        words = _WORD.findall(text.lower())
        count = max(len(words) - ngram + 1, 1) if words else 0
        sketch = MinHash(num_perm=num_perm, seed=seed, permutations=shared, scheme="affine32")
        sketch.update_batch([" ".join(words[i : i + ngram]).encode() for i in range(count)])
        sketches.append(sketch.hashvalues)
    return sketches


def datatrove_minhash(inputs: Path, glob: str, work: Path, tasks: int, workers: int) -> dict[str, float]:
    """datatrove's four MinHash steps over the JSONL files `glob` in `inputs`: wall seconds per
    step, and how many documents it removed. It gets Crucible's default layout (bands x rows,
    word 5-grams, seed) and 32-bit SHA-1 shingle hashes, as Crucible and datasketch use."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    from data_prep.minhash.config import MinHashConfig

    ours = MinHashConfig()
    bands, rows = ours.band_layout()
    config = MinhashConfig(
        n_grams=ours.ngram,
        num_buckets=bands,
        hashes_per_bucket=rows,
        seed=ours.seed,
        hash_config=HashConfig(precision=32, hash_fc="sha1"),
    )
    sigs, buckets, removals = work / "signatures", work / "buckets", work / "removals"
    steps: list[tuple[str, list[Any], int]] = [
        (
            "signatures",
            [
                JsonlReader(str(inputs), glob_pattern=glob),
                MinhashDedupSignature(output_folder=str(sigs), config=config),
            ],
            tasks,
        ),
        ("buckets", [MinhashDedupBuckets(input_folder=str(sigs), output_folder=str(buckets), config=config)], bands),
        ("clusters", [MinhashDedupCluster(input_folder=str(buckets), output_folder=str(removals), config=config)], 1),
        (
            "filter",
            [
                JsonlReader(str(inputs), glob_pattern=glob),
                MinhashDedupFilter(input_folder=str(removals)),
                JsonlWriter(str(work / "deduped"), compression=None),
            ],
            tasks,
        ),
    ]
    seconds: dict[str, float] = {}
    with quiet_stderr():
        for name, pipeline, n_tasks in steps:
            executor = LocalPipelineExecutor(
                pipeline,
                tasks=n_tasks,
                workers=min(workers, n_tasks),
                logging_dir=str(work / "logs" / name),
                start_method="spawn",
            )
            started = time.perf_counter()
            executor.run()
            seconds[name] = time.perf_counter() - started
    seconds["removed"] = sum(p.stat().st_size // 4 for p in removals.glob("*.remove"))
    return seconds


def datatrove_seconds(run: dict[str, float]) -> float:
    return sum(v for k, v in run.items() if k != "removed")


def compare_pipelines(
    b: Bench, inputs: list[Path], stages: list[str], workers: int, datatrove_files: tuple[Path, str] | None
) -> tuple[float, dict[str, Any], dict[str, float] | None]:
    """Crucible's `run_prep` and datatrove's MinHash steps on the same files (given as a folder
    and a glob), in turn and in fresh folders: Crucible's best wall seconds and stats, and
    datatrove's best run (None without `datatrove_files`). Crucible's shards are sized to the
    largest input file, so that each file is one task for both engines."""
    from data_prep.readers import discover
    from pipeline.config import PrepConfig
    from pipeline.prep import run_prep

    largest = max(Path(piece.path).stat().st_size for piece in discover(inputs))
    config = PrepConfig(inputs=inputs, stages=stages, workers=workers, shard_mb=largest / 2**20)  # type: ignore[arg-type]
    best: tuple[float, dict[str, Any]] = (float("inf"), {})
    theirs: dict[str, float] | None = None
    for _ in range(max(1, b.pipeline_repeat)):
        started = time.perf_counter()
        stats = run_prep(config, b.fresh_dir("crucible"), show_progress=False)
        best = min(best, (time.perf_counter() - started, stats), key=lambda run: run[0])
        if datatrove_files is not None:
            run = datatrove_minhash(*datatrove_files, b.fresh_dir("datatrove"), tasks=workers, workers=workers)
            theirs = run if theirs is None or datatrove_seconds(run) < datatrove_seconds(theirs) else theirs
    return best[0], best[1], theirs


def minhash_note(stats: PrepStats, dt: dict[str, float]) -> str:
    row = stats.stage("minhash_dedup")
    steps = ", ".join(f"{k} {v:.1f}" for k, v in dt.items() if k != "removed")
    return (
        f"near-duplicates removed: Crucible {sum(row.dropped.values())}, datatrove {int(dt['removed'])} "
        f"(datatrove removes every bucket match, Crucible checks the Jaccard estimate); "
        f"datatrove wall seconds: {steps}"
    )


def bench_minhash(b: Bench) -> list[Result]:
    from data_prep.minhash.config import MinHashConfig
    from data_prep.minhash.kernels import signatures

    name = "neardup.jsonl"
    texts = [r["text"] for r in b.corpus(name)]
    cfg, n = MinHashConfig(), len(texts)
    (ours, sketch), _ = b.compare(
        "minhash signatures",
        lambda: signatures(texts, cfg),
        lambda: datasketch_signatures(texts, cfg.ngram, cfg.num_perm, cfg.seed),
    )
    results = [
        Result(
            "minhash: signatures (shingling included)",
            name,
            n,
            "docs/s",
            rate(n, ours),
            "datasketch MinHash.update_batch",
            rate(n, sketch),
            0.7,
        )
    ]
    missing = datatrove_missing()
    path = corpus_file(b.data, name)
    wall, stats, dt = compare_pipelines(b, [path], ["minhash_dedup"], 1, None if missing else (path.parent, path.name))
    stage = "minhash_dedup stage via run_prep, 1 worker"
    if dt is None:
        return results + [
            Result(stage, name, n, "docs/s", rate(n, wall), "datatrove 4 MinHash steps", None, 5, missing or "")
        ]
    return results + [
        Result(
            "minhash: signatures per core",
            name,
            n,
            "docs/s",
            rate(n, ours),
            "datatrove MinhashDedupSignature, 1 task",
            rate(n, dt["signatures"]),
            5,
            "datatrove's step also reads the JSONL and sorts its bucket files",
        ),
        Result(
            stage,
            name,
            n,
            "docs/s",
            rate(n, wall),
            "datatrove signatures+buckets+cluster+filter, 1 worker",
            rate(n, datatrove_seconds(dt)),
            5,
            minhash_note(stats, dt),
        ),
    ]


def bench_langid(b: Bench) -> list[Result]:
    import fasttext

    from data_prep.langid import LangIdConfig, LangIdStage

    name = "multilingual.jsonl"
    records = b.corpus(name)
    parts = batches(docs_table(records))
    stage = LangIdStage(LangIdConfig())
    stage.setup()  # raises FileNotFoundError, saying how to install it, when the model is absent
    model = fasttext.load_model(str(LangIdConfig().resolved_model_path()))
    one_line = [r["text"].replace("\n", " ") for r in records]  # fastText refuses newlines
    (ours, raw), _ = b.compare(
        "langid", lambda: [stage.decide(batch) for batch in parts], lambda: model.predict(one_line, k=1)
    )
    n = len(records)
    return [
        Result(
            "langid: LangIdStage.decide",
            name,
            n,
            "docs/s",
            rate(n, ours),
            "fastText model.predict(texts, k=1)",
            rate(n, raw),
            0.7,
            "the baseline's newlines are folded before timing; the stage folds whitespace itself",
        )
    ]


def bench_pii(b: Bench) -> list[Result]:
    from data_prep.pii import PiiConfig, PiiStage

    texts, parts = [r["text"] for r in b.mix], batches(docs_table(b.mix))
    narrow, full = PiiStage(PiiConfig(enabled_types=["email", "ip_address"])), PiiStage(PiiConfig())
    sides = [lambda: [narrow.decide(batch) for batch in parts], lambda: [full.decide(batch) for batch in parts]]
    missing = datatrove_missing()
    if not missing:
        from datatrove.pipeline.formatters import PIIFormatter

        formatter = PIIFormatter()
        sides.append(lambda: [formatter.format(t) for t in texts])
    seconds, _ = b.compare("pii (e-mail, IP)", *sides)
    n = len(texts)
    baseline, theirs = "datatrove PIIFormatter (e-mail + IP)", rate(n, seconds[2]) if not missing else None
    mix_mchars_per_s = sum(map(len, texts)) / 1e6 / seconds[1]
    hostile = {f: (f * (HOSTILE_CHARS // len(f) + 1))[:HOSTILE_CHARS] for f in HOSTILE_FRAGMENTS}
    slowest, fragment = max(
        (best_time(lambda line=line: full.redactor.redact(line), 1)[0], f) for f, line in hostile.items()
    )
    return [
        Result(
            "pii: PiiStage, e-mail + IP only",
            MIX,
            n,
            "docs/s",
            rate(n, seconds[0]),
            baseline,
            theirs,
            0.7,
            missing or "",
        ),
        Result(
            "pii: PiiStage, all 7 types",
            MIX,
            n,
            "docs/s",
            rate(n, seconds[1]),
            baseline,
            theirs,
            None,
            "also secrets, IBANs, cards, SSNs and phones",
        ),
        Result(
            "pii: all 7 types, slowest hostile 1 MB line",
            f"{len(hostile)} lines of one repeated fragment",
            len(hostile),
            "M chars/s",
            HOSTILE_CHARS / 1e6 / slowest,
            "the all-types stage on the mix",
            mix_mchars_per_s,
            None,
            f"slowest: {fragment!r}",
        ),
    ]


def bench_quality(b: Bench) -> list[Result]:
    from data_prep.quality import QualityConfig, QualityStage

    name = "english.jsonl"
    records = b.corpus(name, every=QUALITY_EVERY)
    table = docs_table(records, lang=["en"] * len(records))
    stage = QualityStage(QualityConfig())
    n, missing = len(records), datatrove_missing()
    corpus, baseline = f"{name}, 1 in {QUALITY_EVERY} docs", "datatrove GopherQualityFilter + GopherRepetitionFilter"

    def ours() -> int:
        return n - len(stage.decide(table).drops)

    if missing:
        (seconds,), _ = b.compare("quality", ours)
        return [
            Result("quality: QualityStage.decide", corpus, n, "docs/s", rate(n, seconds), baseline, None, 0.7, missing)
        ]
    from datatrove.data import Document
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter

    docs = [Document(text=r["text"], id=str(r["id"])) for r in records]
    quality, repetition = GopherQualityFilter(), GopherRepetitionFilter()
    quality.filter(docs[0])  # loads spaCy's tokenizer outside the timing

    def passes(result: bool | tuple[bool, str]) -> bool:
        return result[0] if isinstance(result, tuple) else result

    def gopher() -> int:  # as a pipeline runs them: repetition sees only what quality kept
        return sum(1 for d in docs if passes(quality.filter(d)) and passes(repetition.filter(d)))

    (seconds, theirs), (kept, dt_kept) = b.compare("quality", ours, gopher)
    return [
        Result(
            "quality: QualityStage.decide",
            corpus,
            n,
            "docs/s",
            rate(n, seconds),
            baseline,
            rate(n, theirs),
            0.7,
            f"kept: Crucible {kept}/{n}, datatrove {dt_kept}/{n} (different rules)",
        )
    ]


# ---- the whole prep, two workers ------------------------------------------------------------


def bench_prep(b: Bench) -> list[Result]:
    records = b.mix[::PREP_EVERY]
    folder = b.work / "mix"
    for part in range(2):  # two interleaved files, so that both engines make two equal tasks
        write_jsonl(folder / f"mix-{part}.jsonl", records[part::2])
    missing, n = datatrove_missing(), len(records)
    wall, stats, dt = compare_pipelines(b, [folder], DOC_STAGES, 2, None if missing else (folder, "mix-*.jsonl"))
    per_stage = ", ".join(f"{row.name} {row.seconds:.1f}" for row in stats.stages)
    note = f"kept {stats.kept}/{n}; Crucible task-seconds per stage: {per_stage}; "
    note += missing if dt is None else minhash_note(stats, dt)
    return [
        Result(
            "whole prep: run_prep, 2 workers, all doc stages",
            f"{MIX}, 1 in {PREP_EVERY} docs",
            n,
            "docs/s",
            rate(n, wall),
            "datatrove 4 MinHash steps only, 2 workers",
            None if dt is None else rate(n, datatrove_seconds(dt)),
            None,
            note,
        )
    ]


BENCHES: dict[str, Callable[[Bench], list[Result]]] = {
    "normalize": bench_normalize,
    "exact_dedup": bench_exact,
    "minhash": bench_minhash,
    "langid": bench_langid,
    "pii": bench_pii,
    "quality": bench_quality,
    "prep": bench_prep,
}


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--pipeline-repeat",
        type=int,
        default=1,
        help="runs of each run_prep / datatrove executor measurement (default: 1)",
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run (default: all of {','.join(SECTIONS)})",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also run Crucible's side of each in-process measurement under cProfile"
    )
    args = parser.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in BENCHES]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {','.join(SECTIONS)}")
    results: list[Result] = []
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="crucible-prep-bench-") as work:
        bench = Bench(data_dir(args.data), args.repeat, args.pipeline_repeat, args.profile, Path(work))
        for section in chosen:
            started = time.perf_counter()
            try:
                results += BENCHES[section](bench)
            except (ImportError, FileNotFoundError) as exc:  # an optional baseline or model is absent
                skipped[section] = str(exc)
            print(f"[{section}: {time.perf_counter() - started:.0f}s]", file=sys.stderr, flush=True)
    print_table(
        f"Data prep throughput (best of {args.repeat}; pipelines best of {args.pipeline_repeat}; "
        f"{os.cpu_count()} CPUs)",
        results,
    )
    for section, reason in skipped.items():
        print(f"- skipped {section}: {reason}")
    print_json("prep", results, repeat=args.repeat, pipeline_repeat=args.pipeline_repeat, skipped=skipped)


if __name__ == "__main__":
    main()
