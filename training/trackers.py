"""Experiment trackers: where a team already looks at its runs (`train.loggers`).

Each back-end gets the same four things from rank 0: the run's config (once), the prep stats of
the shards it trains on (once, when the prep's stats.json sits beside them), every logged step's
numbers and every event (saves, resumes, rollbacks, stops). TensorBoard ships with the core
install; W&B and MLflow come with the `trackers` extra and are imported only when named, so a
run that does not name them never needs them. W&B runs offline unless `train.tracking.wandb_mode`
or WANDB_MODE says otherwise; MLflow writes to a folder in the run unless given a tracking URI.
A resumed run continues the same W&B and MLflow runs (their ids are kept in the run folder).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

from pipeline.ground.atomic import write_json
from pipeline.ground.errors import UserError
from pipeline.ground.layout import PrepFolder, TrainFolder
from training.config import TrackingConfig

IDS_FILE = "trackers.json"  # in the run folder: the W&B and MLflow run ids a resume continues
WandbMode = Literal["online", "offline", "disabled", "shared"]  # what wandb.init takes as `mode`


def check_installed(loggers: Sequence[str]) -> None:
    """Refuse, before any process group, a logger whose library (of the same name) is missing: one
    line naming the extra."""
    for name in loggers:
        if importlib.util.find_spec(name) is None:
            raise UserError(
                f"train.loggers names {name}, whose library is not installed: "
                f"pip install -e '.[trackers]' (or drop {name} from train.loggers)"
            )


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; a list of named dicts (prep's stages) keyed by their names."""
    if isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
        value = {v["name"]: {k: x for k, x in v.items() if k != "name"} for v in value}
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat |= flatten(item, f"{prefix}{key}.")
        return flat
    return {prefix.rstrip("."): value}


def numbers(record: dict[str, Any]) -> dict[str, float]:
    """The plottable scalars of a metrics record (not the step itself, not bools or None)."""
    return {
        k: float(v)
        for k, v in record.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class TensorBoard:
    id = None  # nothing for a resume to continue: it appends to the same folder

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        prep_stats: dict[str, Any] | None,
        settings: TrackingConfig,
        run_id: str | None,
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(TrainFolder(run_dir).tensorboard))
        self.writer.add_text("config", f"```\n{json.dumps(config, indent=2, sort_keys=True)}\n```")
        if prep_stats is not None:
            self.writer.add_text("prep_stats", f"```\n{json.dumps(prep_stats, indent=2, sort_keys=True)}\n```")

    def metrics(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def event(self, event: dict[str, Any]) -> None:
        self.writer.add_text("events", json.dumps(event, sort_keys=True), event.get("step", 0))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandB:
    """Steps are plotted against a `step` metric, not W&B's own counter: after a rollback the
    step goes back, which W&B's counter refuses."""

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        prep_stats: dict[str, Any] | None,
        settings: TrackingConfig,
        run_id: str | None,
    ) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            dir=str(run_dir),
            project=settings.project,
            name=run_dir.name,
            id=run_id,
            resume="allow",
            mode=cast(WandbMode, os.environ.get("WANDB_MODE") or settings.wandb_mode),  # W&B checks WANDB_MODE
            config=config | ({"prep_stats": prep_stats} if prep_stats is not None else {}),
            settings=wandb.Settings(
                silent=True, console="off", x_disable_stats=True, disable_git=True, x_save_requirements=False
            ),
        )
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        self.events: list[list[Any]] = []

    @property
    def id(self) -> str:
        return self.run.id

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values | {"step": step})

    def event(self, event: dict[str, Any]) -> None:
        self.events.append([event.get("step"), event["event"], json.dumps(event, sort_keys=True)])
        self.run.log(
            {f"event/{event['event']}": sum(e[1] == event["event"] for e in self.events), "step": event.get("step", 0)}
        )

    def close(self) -> None:
        if self.events:
            self.run.log({"events": self.wandb.Table(columns=["step", "event", "record"], data=self.events)})
        self.run.finish()


def mlflow_uri(run_dir: Path, settings: TrackingConfig) -> str:
    """Where MLflow records this run: `train.tracking.mlflow_uri`, else the folder RUN/mlruns."""
    return settings.mlflow_uri or TrainFolder(run_dir).mlruns.resolve().as_uri()


def is_folder_store(uri: str) -> bool:
    """A folder store: MLflow keeps it in maintenance and asks its writers and readers to opt in with
    MLFLOW_ALLOW_FILE_STORE=true; a database store needs the full `mlflow` package (SQLAlchemy), which the
    extra leaves out."""
    return "://" not in uri or uri.startswith("file:")


def mlflow_read_command(run_dir: Path, settings: TrackingConfig) -> str:
    """A shell command that shows this run's MLflow record (latest metrics, params) offline, with the `mlflow`
    command of mlflow-skinny, which the trackers extra installs."""
    uri = mlflow_uri(run_dir, settings)
    run_id = json.loads((run_dir / IDS_FILE).read_text())["mlflow"]
    opt_in = "MLFLOW_ALLOW_FILE_STORE=true " if is_folder_store(uri) else ""
    return f"{opt_in}MLFLOW_TRACKING_URI={shlex.quote(uri)} mlflow runs describe --run-id {run_id}"


def mlflow_hint(run_dir: Path, settings: TrackingConfig) -> str:
    """How to look at this run in MLflow. `mlflow ui` is the full package's server, not in mlflow-skinny: a hint to
    run it in the trackers' environment would fail (no flask)."""
    uri = mlflow_uri(run_dir, settings)
    if not is_folder_store(uri):
        return f"MLflow: this run is on {uri}, in its web UI; offline: {mlflow_read_command(run_dir, settings)}"
    return (
        f"MLflow: {mlflow_read_command(run_dir, settings)}; the web UI needs the full package (pip install "
        f"mlflow), then MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri {shlex.quote(uri)}"
    )


class MLflow:
    BATCH = 100  # MLflow's most params (and a safe number of metrics) per request
    VALUE = 6000  # MLflow's longest param value; the whole config is an artifact too

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        prep_stats: dict[str, Any] | None,
        settings: TrackingConfig,
        run_id: str | None,
    ) -> None:
        uri = mlflow_uri(run_dir, settings)
        if is_folder_store(uri):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self.Metric, self.client = Metric, MlflowClient(uri)
        if run_id is None:
            experiment = self.client.get_experiment_by_name(settings.project)
            experiment_id = (
                experiment.experiment_id if experiment is not None else self.client.create_experiment(settings.project)
            )
            run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
            flat = flatten(config) | {f"prep_stats.{k}": v for k, v in flatten(prep_stats or {}).items()}
            params = [
                Param(k, (json.dumps(v) if isinstance(v, (list, dict)) else str(v))[: self.VALUE])
                for k, v in flat.items()
            ]
            for start in range(0, len(params), self.BATCH):
                self.client.log_batch(run_id, params=params[start : start + self.BATCH])
            self.client.log_dict(run_id, config, "config.json")
            if prep_stats is not None:
                self.client.log_dict(run_id, prep_stats, "prep_stats.json")
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.id = run_id
        self.counts: dict[str, int] = {}

    def metrics(self, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        metrics = [self.Metric(k, v, now, step) for k, v in values.items()]
        for start in range(0, len(metrics), self.BATCH):
            self.client.log_batch(self.id, metrics=metrics[start : start + self.BATCH])

    def event(self, event: dict[str, Any]) -> None:
        self.counts[event["event"]] = self.counts.get(event["event"], 0) + 1
        self.metrics(event.get("step", 0), {f"event/{event['event']}": self.counts[event["event"]]})
        self.client.log_text(
            self.id, json.dumps(event, sort_keys=True), f"events/{sum(self.counts.values()):04d}-{event['event']}.json"
        )

    def close(self) -> None:
        self.client.set_terminated(self.id)


BACKENDS: dict[str, type[TensorBoard] | type[WandB] | type[MLflow]] = {
    "tensorboard": TensorBoard,
    "wandb": WandB,
    "mlflow": MLflow,
}


class Trackers:
    """Every back-end named in `train.loggers`, fed together; nothing at all on ranks other than 0."""

    def __init__(
        self,
        run_dir: Path,
        loggers: Sequence[str],
        settings: TrackingConfig,
        config: dict[str, Any],
        prep_stats: dict[str, Any] | None,
        enabled: bool,
    ) -> None:
        self.backends: list[Any] = []
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        ids_path = run_dir / IDS_FILE
        ids = json.loads(ids_path.read_text()) if ids_path.exists() else {}
        for name in loggers:
            backend = BACKENDS[name](run_dir, config, prep_stats, settings, ids.get(name))
            if backend.id is not None:
                ids[name] = backend.id
            self.backends.append(backend)
        if ids:
            write_json(ids_path, ids)

    def metrics(self, record: dict[str, Any]) -> None:
        values = numbers(record)
        for backend in self.backends:
            backend.metrics(record["step"], values)

    def event(self, event: dict[str, Any]) -> None:
        for backend in self.backends:
            backend.event(event)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()
        self.backends = []


def prep_stats_of(data_dir: Path) -> dict[str, Any] | None:
    """The stats.json of the prep that wrote these shards (it sits beside `shards/`), if any."""
    path = PrepFolder.holding(Path(data_dir)).local_stats
    return json.loads(path.read_text()) if path.is_file() else None
