"""`run` end to end on a small corpus: prep, training under torchrun (2 ranks), samples, report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, read_set, write_jsonl


def test_run_prepares_trains_samples_and_reports(tmp_path: Path) -> None:
    records = [{"text": r["text"]} for r in read_set("english", 120)]
    corpus = write_jsonl(tmp_path / "corpus" / "docs.jsonl", records)
    config = tmp_path / "small.yaml"
    config.write_text(f"""
prep:
  inputs: [{corpus}]
  tokenizer: {{vocab_size: 512}}
  pack: {{seq_len: 64, val_fraction: 0.1}}
train: {{max_steps: 12, global_batch_size: 8, micro_batch_size: 2, eval_interval: 6, log_interval: 3, peak_tflops: 1}}
checkpoint: {{interval: 6}}
launch: {{nproc_per_node: 2}}
samples: {{prompts: ["The ", "It was"], max_new_tokens: 8}}
""")
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", "--config", str(config), "--output", str(run),
                             "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data prep" in result.stdout and "continuation" in result.stdout and "It was" in result.stdout
    assert (run / "data" / "shards" / "manifest.json").exists()
    assert (run / "train" / "checkpoints" / "step-00000012" / "crucible.json").exists()
    report = (run / "report.md").read_text()
    for section in ("## Data", "## Training", "## Checkpoints and events", "## Samples", "It was"):
        assert section in report
    html = (run / "report.html").read_text()
    assert '<img alt="data funnel" src="funnel.png">' in html and "<table>" in html
    for image in ("funnel.png", "curves.png"):
        assert (run / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
