"""Experiment trackers: a real training run logs to TensorBoard, W&B (offline) and MLflow (a local
folder), and each is read back with its own library, with no network."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from pipeline.ground.errors import UserError
from tests.conftest import metrics, torchrun
from training import trackers

LOGGERS = ["--set", "train.loggers=[tensorboard, wandb, mlflow]"]
TRAIN = [
    "--set",
    "train.global_batch_size=8",
    "--set",
    "train.micro_batch_size=2",
    "--set",
    "train.warmup_steps=2",
    "--set",
    "train.eval_interval=3",
    "--set",
    "train.peak_tflops=1",
    "--set",
    "checkpoint.interval=3",
]


def wandb_records(path: Path) -> list:
    """The records of a .wandb file (LevelDB log blocks after a 7-byte header), parsed by wandb's protobufs."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, pending, records = path.read_bytes(), 32768, 7, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position : position + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):
            position += left  # the padding at the end of a block
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_history(path: Path) -> list[dict]:
    return [
        {
            item.nested_key[0] if item.nested_key else item.key: json.loads(item.value_json)
            for item in record.history.item
        }
        for record in wandb_records(path)
        if record.HasField("history")
    ]


@pytest.mark.slow
def test_one_run_reaches_tensorboard_wandb_and_mlflow(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default, not the environment's doing
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow asks readers of a folder store for it too
    run = tmp_path / "run"
    torchrun(
        1,
        "train",
        "--data",
        str(tiny_shards),
        "--output",
        str(run),
        *TRAIN,
        *LOGGERS,
        "--set",
        "train.max_steps=6",
        "--set",
        "train.tracking.project=trackers-test",
    )
    torchrun(
        1,
        "train",
        "--data",
        str(tiny_shards),
        "--output",
        str(run),
        *TRAIN,
        *LOGGERS,
        "--set",
        "train.max_steps=8",
        "--set",
        "train.tracking.project=trackers-test",
    )  # resumes at step 6
    losses = {r["step"]: r["loss"] for r in metrics(run)}
    assert sorted(losses) == list(range(1, 9))
    ids = json.loads((run / trackers.IDS_FILE).read_text())

    tensorboard = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    tensorboard.Reload()
    assert {e.step: e.value for e in tensorboard.Scalars("loss")} == pytest.approx(losses)
    assert {"config/text_summary", "prep_stats/text_summary", "events/text_summary"} <= set(
        tensorboard.Tags()["tensors"]
    )

    client = MlflowClient((run / "mlruns").resolve().as_uri())
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("trackers-test").experiment_id])
    assert mlflow_run.info.run_id == ids["mlflow"], "the resumed run continued the same MLflow run"
    assert {m.step: m.value for m in client.get_metric_history(ids["mlflow"], "loss")} == pytest.approx(losses)
    assert [m.step for m in client.get_metric_history(ids["mlflow"], "val_loss")] == [3, 6, 8]
    params = mlflow_run.data.params
    assert params["train.max_steps"] == "6" and params["model.d_model"] == "64"
    stats = json.loads((tiny_shards.parent / "stats.json").read_text())
    assert params["prep_stats.tokens.train_tokens"] == str(stats["tokens"]["train_tokens"])
    assert [m.step for m in client.get_metric_history(ids["mlflow"], "event/save")] == [3, 6, 8]
    assert [m.step for m in client.get_metric_history(ids["mlflow"], "event/resume")] == [6]
    artifacts = {a.path for a in client.list_artifacts(ids["mlflow"])}
    assert {"config.json", "prep_stats.json", "events"} <= artifacts

    offline = sorted((run / "wandb").glob(f"offline-run-*-{ids['wandb']}"))
    assert len(offline) == 2, "both runs wrote offline, under one W&B run id"
    history = [row for folder in offline for row in wandb_history(next(folder.glob("*.wandb")))]
    assert {row["step"]: row["loss"] for row in history if "loss" in row} == pytest.approx(losses)
    assert [row["step"] for row in history if "event/save" in row] == [3, 6, 8]
    assert [row["step"] for row in history if "event/resume" in row] == [6]
    (first_run,) = [r.run for r in wandb_records(next(offline[0].glob("*.wandb"))) if r.HasField("run")]
    config = {item.key: json.loads(item.value_json) for item in first_run.config.update}
    assert config["train"]["max_steps"] == 6
    assert config["prep_stats"]["tokens"]["train_tokens"] == stats["tokens"]["train_tokens"]


def test_a_tracker_without_its_library_is_refused_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None if name == "wandb" else object())
    trackers.check_installed(["tensorboard", "mlflow"])
    with pytest.raises(UserError, match=r"train.loggers names wandb.*\.\[trackers\]"):
        trackers.check_installed(["tensorboard", "wandb"])


def test_prep_stats_flatten_to_dotted_keys_with_stages_by_name() -> None:
    stats = {"shards": 2, "stages": [{"name": "read", "docs_in": 5, "dropped": {"empty": 1}}], "tokens": {"n": 9}}
    assert trackers.flatten(stats) == {
        "shards": 2,
        "stages.read.docs_in": 5,
        "stages.read.dropped.empty": 1,
        "tokens.n": 9,
    }


def test_the_mlflow_hint_works_offline_with_what_the_trackers_extra_installs(tmp_path: Path) -> None:
    """mlflow-skinny has no `mlflow ui`: the hint reads the run with a command it does have, and names the full
    package for the web UI."""
    import os
    import subprocess
    import sys

    from training.config import TrackingConfig

    settings = TrackingConfig(project="hint-test")
    logged = trackers.Trackers(tmp_path, ["mlflow"], settings, {"train": {"max_steps": 2}}, None, enabled=True)
    logged.metrics({"step": 1, "loss": 4.25})
    logged.metrics({"step": 2, "loss": 3.875})
    logged.close()
    hint = trackers.mlflow_hint(tmp_path, settings)
    assert "pip install mlflow" in hint and "mlflow ui" in hint
    command = trackers.mlflow_read_command(tmp_path, settings)
    assert command in hint
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the environment's `mlflow`
    result = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    described = json.loads(result.stdout)
    assert described["data"]["metrics"]["loss"] == 3.875 and described["data"]["params"]["train.max_steps"] == "2"
