"""lm-evaluation-harness on a Hugging Face export, with task YAMLs that read our local task files.

Optional: `pip install -e '.[eval]'`. Nothing downloads: the datasets library reads the JSONL or
Parquet file itself (`dataset_path: json|parquet`) and the model loads from the export folder, with
the Hugging Face hubs set offline. The YAMLs encode the same requests Crucible's scorer makes
(`training.tasks`): the choice or target after one space, acc and acc_norm or acc and perplexity.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from pipeline.ground.errors import UserError
from training.tasks import CLOZE, DELIMITER, MULTIPLE_CHOICE, Task, chance


def task_yaml(task: Task, data_file: Path | None = None) -> dict[str, Any]:
    """The lm-evaluation-harness task config of `task` (reading `data_file`, default its own path)."""
    path = data_file or task.path.resolve()
    common = {
        "task": task.name,
        "dataset_path": "parquet" if path.suffix == ".parquet" else "json",
        "dataset_kwargs": {"data_files": {"test": str(path)}},
        "test_split": "test",
        "doc_to_text": "context",
    }
    if task.kind == CLOZE:
        return common | {
            "output_type": "loglikelihood",
            "doc_to_target": DELIMITER + "{{target}}",
            "metric_list": [{"metric": "acc"}, {"metric": "perplexity"}],
        }
    return common | {
        "output_type": "multiple_choice",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "target_delimiter": DELIMITER,
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    }


def run_harness(
    hf_dir: Path, tasks: list[Task], limit: int | None = None, batch_size: int = 8
) -> dict[str, dict[str, Any]]:
    """Per task: lm-eval's metrics (`acc`, `acc_norm` or `perplexity`, `items`), `chance` of a
    multiple-choice task, and its (log-likelihood, greedy) per request, in the order of
    `training.tasks.requests`. The caller refuses choices longer than seq_len first
    (`training.scoring.encode_tasks`): lm-eval stops on them with a bare assertion."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError("lm-evaluation-harness is not installed: pip install -e '.[eval]'") from None
    import torch

    with tempfile.TemporaryDirectory() as folder:
        for task in tasks:
            (Path(folder) / f"{task.name}.yaml").write_text(yaml.safe_dump(task_yaml(task), sort_keys=False))
        out = lm_eval.simple_evaluate(
            model="hf",
            model_args={"pretrained": str(hf_dir), "dtype": "float32"},
            tasks=[t.name for t in tasks],
            task_manager=TaskManager(include_path=folder, include_defaults=False),
            batch_size=batch_size,
            device="cuda" if torch.cuda.is_available() else "cpu",
            limit=limit,
            log_samples=True,
        )
    results = {}
    for task in tasks:
        values = {
            key.split(",")[0]: value
            for key, value in out["results"][task.name].items()
            if key.endswith(",none") and "_stderr" not in key
        }
        samples = sorted(out["samples"][task.name], key=lambda s: s["doc_id"])
        requests = [[float(ll), bool(greedy)] for s in samples for ll, greedy in (r[0] for r in s["resps"])]
        guess = {"chance": chance(task)} if task.kind == MULTIPLE_CHOICE else {}
        results[task.name] = values | guess | {"items": len(samples), "requests": requests}
    return results
