"""`run` end to end on a small corpus: prep, training under torchrun (2 ranks), samples, report;
then the report page in a real headless browser."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.run_times import RUN_TIMES
from pipeline.toy_world import final_checkpoint
from tests.conftest import REPO, read_set, write_jsonl

SCREENSHOT = REPO / "out" / "report-screenshot.png"  # for people to look at; out/ is not committed


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    tmp_path = tmp_path_factory.mktemp("run_verb")
    records = [{"text": r["text"]} for r in read_set("english", 120)]
    corpus = write_jsonl(tmp_path / "corpus" / "docs.jsonl", records)
    config = tmp_path / "small.yaml"
    config.write_text(f"""
prep:
  inputs: [{corpus}]
  tokenizer: {{vocab_size: 512}}
  pack: {{seq_len: 64, val_fraction: 0.1}}
train: {{max_steps: 12, global_batch_size: 8, micro_batch_size: 2, eval_interval: 6, log_interval: 3}}
eval: {{tasks: [{REPO / "data/tasks/debian_next_words.jsonl"}, {REPO / "data/tasks/python_docs_last_word.jsonl"}],
        max_items: 12}}
checkpoint: {{interval: 6}}
launch: {{nproc_per_node: 2}}
samples: {{prompts: ["The ", "It was"], max_new_tokens: 8}}
run: {{toy_world: true, post_training: true}}
""")
    run = tmp_path / "run"
    result = crucible_run(config, run)
    assert result.returncode == 0, result.stderr[-3000:]
    return run, result


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's header chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def crucible_run(config: Path, run: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--config", str(config), "--output", str(run), "--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_run_prepares_trains_samples_and_reports(finished_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    run, result = finished_run
    assert "data prep" in result.stdout and "continuation" in result.stdout and "It was" in result.stdout
    said = " ".join(result.stdout.split())  # the table title wraps at the console's width
    assert "samples from the final checkpoint: validation loss " in said and "at step 12; unigram baseline " in said
    for header in ("chance acc", "perplexity per word", "perplexity per token"):  # the task table, as printed
        assert header in said
    assert " MFU " not in result.stdout  # a CPU without train.peak_tflops: tokens/s only
    assert (run / "data" / "shards" / "manifest.json").exists()
    assert (run / "train" / "checkpoints" / "step-00000012" / "crucible.json").exists()
    report = (run / "report.md").read_text()
    for section in (
        "## Run",
        "## Data",
        "## Training",
        "## Checkpoints and events",
        "## Samples",
        "It was",
        "TP 1 x PP 1 x DP 2, ZeRO-1",
        "wall time: training",
        "| 12 | save | 20",
        "## Toy world",
        "From the final checkpoint: validation loss ",
        "chance acc",
        "perplexity per word",
        "MFU not shown: no peak to measure it against",
    ):
        assert section in report
    assert report.count(" | yes |") == 2, "the toy world writes a sentence of its corpus from cat and from dog"
    assert "## Post-training demo" in report and "post-training demo: made-up facts" in said


def test_post_training_demo_teaches_both_sets_of_facts(
    finished_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """The demo runs SFT and DPO from the run's checkpoint and scores them: the base model, which never saw the
    facts, is at chance on the held-out wordings; DPO's reward accuracy on its held-out pairs rises from where it
    starts (this run's model is too small and too briefly trained for SFT to learn the colours in the demo's
    steps: the sample run's figures are in docs/post_training.md). The scores are the ones in the report."""
    run, _ = finished_run
    results = json.loads((run / "post" / "results.json").read_text())
    colours = results["colours"]
    assert colours["chance"] == 0.25 and colours["base"] <= colours["chance"] + 0.15
    rewards = [accuracy for _, accuracy in results["dpo_reward_accuracy"]]
    assert [step for step, _ in results["dpo_reward_accuracy"]] == list(range(5, 121, 5))
    assert rewards[-1] > rewards[0] + 0.2
    report = (run / "report.md").read_text()
    assert f"| colours (taught by SFT) | 0.25 | {colours['base']:.2f} | {colours['sft']:.2f} |" in report
    assert f"{rewards[0]:.2f} at step {results['dpo_reward_accuracy'][0][0]}" in report
    html = (run / "report.html").read_text()
    assert '<img alt="data funnel" src="data:image/png;base64,' in html and "<table>" in html
    assert 'src="funnel.png"' not in html  # the page carries its images
    for image in ("funnel.png", "curves.png"):
        assert (run / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_page_renders_in_a_browser(
    finished_run: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """Headless Chromium opens the page alone (copied away from its run folder): every image decodes,
    the console stays clean, and a screenshot is written. The page as rendered shows task accuracy
    beside chance (a column, and the plot's dashed lines), the cloze perplexity labelled per word,
    and no MFU above 100% (this CPU run had no peak: the page says MFU is not shown, and why)."""
    from playwright.sync_api import sync_playwright

    run, _ = finished_run
    page_file = tmp_path / "report.html"
    shutil.copy(run / "report.html", page_file)
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(page_file.as_uri(), wait_until="load")
        images = page.evaluate("[...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0])")
        headings = page.evaluate("[...document.querySelectorAll('h2')].map(h => h.textContent)")
        text = page.evaluate("document.body.innerText")
        rows = page.evaluate("[...document.querySelectorAll('tr')].map(r => [...r.cells].map(c => c.innerText))")
        captions = page.evaluate("[...document.querySelectorAll('figcaption')].map(c => c.innerText)")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        browser.close()
    assert errors == []
    assert len(images) >= 2 and all(loaded for _, loaded in images), images
    assert headings[:3] == ["Run", "Data", "Training"] and "Checkpoints and events" in headings
    tasks = next(row for row in rows if row[:3] == ["task", "last step", "acc"])
    assert tasks[3] == "chance acc" and "perplexity per word" in tasks and "perplexity per token" in tasks
    chance = next(row for row in rows if row[0] == "debian_next_words")[3]
    assert chance == "0.2500"  # four choices an item
    assert "task scores over training; dashed: the accuracy of guessing" in captions
    redacted = {r["name"]: r for r in json.loads((run / "data" / "stats.json").read_text())["stages"]}["pii"]["tally"]
    pii_changed = next(row for row in rows if row[0] == "pii")[5]  # the stage table's `changed` column
    assert pii_changed.startswith(f"{redacted['pii']['documents_changed']} docs; redacted ")
    assert all(f"{kind} {n}" in pii_changed for kind, n in list(redacted["redacted"].items())[:3])
    mfu_cells = [cell for row in rows if row and "MFU" in row[0] for cell in row[1:]]
    assert all(float(cell.split()[0]) <= 100 for cell in mfu_cells if cell[:1].isdigit())
    assert "MFU not shown: no peak to measure it against" in text and "MFU (%)" not in text
    width, height = png_size(SCREENSHOT)
    assert width == 1200 and height > 2000 and SCREENSHOT.stat().st_size > 50_000


def test_status_reads_a_local_run(finished_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    run, _ = finished_run

    def status(folder: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pipeline", "status", "--output", str(folder)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )

    result = status(run)
    assert result.returncode == 0, result.stderr
    assert "prep: finished" in result.stdout and "step 12, loss" in result.stdout
    assert "latest checkpoint: step-00000012" in result.stdout
    missing = status(run / "nowhere")
    assert missing.returncode == 2 and missing.stderr.strip() == f"crucible status: no such folder: {run / 'nowhere'}"


def test_a_rerun_of_a_finished_run_reports_the_run_s_times(
    finished_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """The rerun finds every phase done: its summary and report keep the times the phases took, and the
    toy world is not trained again."""
    run, _ = finished_run
    first = json.loads((run / RUN_TIMES).read_text())
    toy = final_checkpoint(run / "toy_world") / "crucible.json"
    toy_written = toy.stat().st_mtime_ns
    rerun = crucible_run(run.parent / "small.yaml", run)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "nothing redone" in rerun.stdout and json.loads((run / RUN_TIMES).read_text()) == first
    assert (
        f"run finished: prep {first['prep']:.0f} s, training {first['training']:.0f} s, toy world "
        f"{first['toy world']:.0f} s, post-training {first['post-training']:.0f} s;"
    ) in rerun.stdout
    assert toy.stat().st_mtime_ns == toy_written
