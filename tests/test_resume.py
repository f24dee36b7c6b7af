"""A prep run killed with SIGKILL resumes from its completion markers to the same bytes,
from the clean documents to the tokenizer, the training shards and the train/val overlap.
The runs include the opt-in web stages (url_dedup, boilerplate, line_filter), so a kill can fall in their steps too;
one more reads web archives and extracts their pages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_jsonl
from tests.extraction_set import labelled_pages, page_html
from tests.warc_files import metadata, request, response, warcinfo, write_warc

REPO = Path(__file__).resolve().parents[1]
STAGES = (
    "[extract,normalize,url_dedup,exact_dedup,boilerplate,minhash_dedup,langid,line_filter,pii,quality,tokenize,pack,"
    "split_overlap]"
)


@pytest.fixture(scope="module")
def web_corpus(mixed_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mixed corpus with a URL and a fetch date per document, every ninth one another spelling of
    the URL before it, so that url_dedup has copies to drop."""
    records = [json.loads(line) for line in mixed_corpus.read_text().splitlines()]
    for i, record in enumerate(records):
        record["url"] = f"https://example.org/{record['id']}"
        record["date"] = f"2024-01-{1 + i % 28:02d}"
        if i % 9 == 8:
            record["url"] = records[i - 1]["url"].replace("https://", "HTTP://") + "/?utm_source=feed"
    return write_jsonl(tmp_path_factory.mktemp("web") / "web.jsonl", records)


def prep_command(corpus: Path, output: Path, *sets: str) -> list[str]:
    """The prep of these tests; `sets` (`key=value`) come last, so they win."""
    return [
        sys.executable,
        "-m",
        "pipeline",
        "prep",
        "--input",
        str(corpus),
        "--output",
        str(output),
        "--no-progress",
        "--set",
        "prep.shard_mb=0.25",
        "--set",
        "prep.workers=1",
        "--set",
        "prep.tokenizer.vocab_size=1000",
        "--set",
        f"prep.stages={STAGES}",
        "--set",
        "prep.read.keep_fields=[url, date]",
        "--set",
        "prep.line_filter.policy_lines=true",
        # several find, count and bucket tasks per band, so that a kill can fall between them
        "--set",
        "prep.exact_dedup.find_shards_per_task=1",
        "--set",
        "prep.minhash_dedup.bucket_shards_per_task=1",
        "--set",
        "prep.url_dedup.find_shards_per_task=1",
        "--set",
        "prep.boilerplate.count_shards_per_task=1",
        *(arg for value in sets for arg in ("--set", value)),
    ]


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def kill_after_marker(command: list[str], marker: Path) -> None:
    """Start `command` and SIGKILL its process group once `marker` exists."""
    process = subprocess.Popen(
        command, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def reference(web_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run, which every interrupted one must match."""
    output = tmp_path_factory.mktemp("reference") / "prep"
    subprocess.run(prep_command(web_corpus, output), cwd=REPO, check=True, capture_output=True)
    return output


# A marker of every kind of step, in pipeline order: per document, per shard, by range (find, count, buckets),
# global (clusters, the tokenizer), after pack (the overlap scan); the opt-in web stages included.
KILL_POINTS = [
    "extract/done-00001.json",
    "url_dedup.key/done-00001.json",
    "url_dedup.find/done-00000.json",
    "url_dedup.filter/done-00001.json",
    "exact_dedup.find/done-00000.json",
    "minhash_dedup.signatures/done-00001.json",
    "minhash_dedup.buckets/done-00001.json",
    "minhash_dedup.clusters/done-00000.json",
    "boilerplate.hash/done-00001.json",
    "boilerplate.count/done-00000.json",
    "boilerplate/done-00001.json",
    "line_filter/done-00001.json",
    "tokenize.train/done-00000.json",
    "tokenize/done-00001.json",
    "split_overlap.scan/done-00000.json",
]


def test_sigkill_after_each_kind_of_step_then_rerun_gives_identical_outputs(
    web_corpus: Path, reference: Path, tmp_path: Path
) -> None:
    """One prep killed again and again, each rerun right after the marker of the next kill point (in pipeline
    order, so each is written by the run that is killed after it), then run to its end: every resume starts
    from what the kills before it left."""
    killed = tmp_path / "killed"
    for kill_after in KILL_POINTS:
        marker = killed / "work" / kill_after
        kill_after_marker(prep_command(web_corpus, killed), marker)
        assert marker.exists(), f"the run was killed mid-way, after {kill_after}"
        assert not (killed / "stats.json").exists(), f"the run finished before the kill after {kill_after}"

    subprocess.run(prep_command(web_corpus, killed), cwd=REPO, check=True, capture_output=True)
    for folder in ("clean", "dropped", "quarantine", "tokenizer", "shards"):
        assert tree_bytes(killed / folder) == tree_bytes(reference / folder), folder
    assert tree_bytes(reference / "clean"), "the comparison is not vacuous"
    overlap = [json.loads((run / "stats.json").read_text())["split_overlap"] for run in (killed, reference)]
    assert overlap[0] == overlap[1] and overlap[0]["sampled"] > 0


def test_ctrl_c_ends_prep_in_one_line_and_the_rerun_gives_identical_outputs(
    web_corpus: Path, reference: Path, tmp_path: Path
) -> None:
    """Ctrl-C reaches the prep process and its workers alike (a terminal signals the whole job)."""
    stopped = tmp_path / "stopped"
    process = subprocess.Popen(
        prep_command(web_corpus, stopped),
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # a terminal's job
    marker = stopped / "work" / "minhash_dedup.signatures" / "done-00001.json"
    deadline = time.monotonic() + 120
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and not (stopped / "stats.json").exists(), err[-3000:]
    assert err.strip().splitlines() == ["crucible prep: interrupted; the same command goes on from what was finished"]

    subprocess.run(prep_command(web_corpus, stopped), cwd=REPO, check=True, capture_output=True)
    for folder in ("clean", "dropped", "quarantine", "tokenizer", "shards"):
        assert tree_bytes(stopped / folder) == tree_bytes(reference / folder), folder


def test_sigkill_while_extracting_web_archives_then_rerun_gives_identical_outputs(tmp_path: Path) -> None:
    """Three .warc.gz files (one with a damaged member), read and extracted task by task."""
    pages = labelled_pages()
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    for part in range(3):
        records = [warcinfo()]
        for n in range(part * 200, part * 200 + 200):
            url = f"https://site.example/{n}"
            html = page_html(pages[n % len(pages)]).replace("<body>", f"<body><h1>Archive page {n}</h1>")
            records += [request(url), response(url, html.encode()), metadata(url)]
        offsets = write_warc(crawl / f"part-{part}.warc.gz", records)
        if part == 1:
            data = bytearray((crawl / "part-1.warc.gz").read_bytes())
            data[offsets[50] + 40 : offsets[50] + 80] = bytes(40)
            (crawl / "part-1.warc.gz").write_bytes(bytes(data))
    sets = ["prep.stages=[extract, normalize, exact_dedup]"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(prep_command(crawl, reference, *sets), cwd=REPO, check=True, capture_output=True)
    marker = killed / "work" / "extract" / "done-00000.json"
    kill_after_marker(prep_command(crawl, killed, *sets), marker)
    assert marker.exists() and not (killed / "stats.json").exists(), "the run was killed mid-way"
    subprocess.run(prep_command(crawl, killed, *sets), cwd=REPO, check=True, capture_output=True)
    for folder in ("clean", "dropped", "quarantine"):
        assert tree_bytes(killed / folder) == tree_bytes(reference / folder), folder
    stats = json.loads((reference / "stats.json").read_text())
    assert stats["stages"][0]["quarantined"] == {"corrupt_frame": 1} and stats["stages"][1]["docs_in"] == 599
