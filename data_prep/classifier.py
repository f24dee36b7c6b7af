"""A fastText quality classifier: training on labelled JSONL, scoring, and held-out metrics.

The model sees text as the `quality_model` stage gives it (`model_text`: newlines become spaces,
since fastText reads one line per example; it splits words on whitespace itself, and case is
kept as a signal), so training and scoring agree. Training uses one thread and a seed, so the same files and settings give the same model.
The batch form of `predict` is used throughout: the single-string form breaks with numpy 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from data_prep.fasttext_models import LABEL_PREFIX, load_fasttext
from pipeline.ground.atomic import atomic_path, write_json, write_text
from pipeline.ground.errors import UserError
from pipeline.ground.records import iter_records
from pipeline.ground.schema import Section

MODEL_FILE, REPORT_FILE, HELDOUT_FILE = "model.bin", "report.json", "heldout.jsonl"


class ClassifierTrainConfig(Section):
    """Hyper-parameters of `crucible classifier train` (fastText supervised, one thread)."""

    label: str = Field("hq", pattern=r"^\w+$", description="Name of the positive class; the other is not_<label>.")
    holdout_fraction: float = Field(0.1, gt=0, lt=1, description="Share of each class held out for the report.")
    seed: int = Field(0, description="Seeds the split and fastText.")
    dim: int = Field(32, ge=1, description="Embedding size.")
    epoch: int = Field(10, ge=1)
    lr: float = Field(0.5, gt=0)
    word_ngrams: int = Field(2, ge=1, description="Longest word n-gram used as a feature.")
    min_count: int = Field(1, ge=1, description="Words seen fewer times are ignored.")
    bucket: int = Field(100_000, ge=1, description="Hash buckets of n-gram features (model size ~ bucket * dim).")
    histogram_bins: int = Field(10, ge=2, description="Bins of the score histogram in the report.")


def model_text(texts: pa.Array | pa.ChunkedArray | list[str]) -> list[str]:
    """Texts as the classifier reads them: one line (fastText splits words on any whitespace itself)."""
    array = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(texts, pa.string())
    return pc.replace_substring(array, "\n", " ").to_pylist()


class FastTextScorer:
    """The probability a binary fastText model gives `label`, for a batch of texts."""

    def __init__(self, model_path: Path, label: str) -> None:
        if not Path(model_path).is_file():
            raise UserError(f"classifier model {model_path} not found: train one with `crucible classifier train`")
        self.model = load_fasttext(model_path, "classifier model", "train one with `crucible classifier train`")
        self.label = LABEL_PREFIX + label
        labels = self.model.get_labels()
        if self.label not in labels or len(labels) != 2:
            raise UserError(f"classifier {model_path}: expected two labels with {self.label}, found {labels}")

    def score(self, texts: list[str]) -> np.ndarray:
        """P(label) per text (float32); texts must already be `model_text`."""
        labels, probs = self.model.predict(texts, k=1)
        top = np.array([float(p[0]) for p in probs], dtype=np.float64)
        is_label = np.array([bool(x) and x[0] == self.label for x in labels])
        return np.clip(np.where(is_label, top, 1.0 - top), 0.0, 1.0).astype(np.float32)


def read_texts(path: Path, text_field: str) -> list[str]:
    """The `text_field` strings of a JSON Lines (or Parquet) file (records without one are skipped)."""
    if not Path(path).is_file():
        raise UserError(f"{path} not found")
    texts = [
        value for _, record in iter_records(path) if isinstance(value := record.get(text_field), str) and value.strip()
    ]
    if not texts:
        raise UserError(f"{path}: no record with a text in field {text_field!r}")
    return texts


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: the chance a positive outscores a negative (ties count half)."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    _, starts, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(starts, counts):  # average rank within ties
        ranks[order[start : start + count]] = start + (count + 1) / 2
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def metrics(scores: np.ndarray, positive: np.ndarray, bins: int, threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy, precision, recall at `threshold`, AUC, and the score histogram per class."""
    predicted = scores >= threshold
    true_pos = int((predicted & positive).sum())
    edges = np.linspace(0.0, 1.0, bins + 1)
    return {
        "documents": len(scores),
        "positives": int(positive.sum()),
        "threshold": threshold,
        "accuracy": round(float((predicted == positive).mean()), 4),
        "precision": round(true_pos / max(int(predicted.sum()), 1), 4),
        "recall": round(true_pos / max(int(positive.sum()), 1), 4),
        "auc": round(auc(scores, positive), 4),
        "histogram": {
            "edges": [round(float(e), 4) for e in edges],
            "positive": np.histogram(scores[positive], edges)[0].tolist(),
            "negative": np.histogram(scores[~positive], edges)[0].tolist(),
        },
    }


def _split(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(n)
    held = max(1, round(n * fraction))
    return order[held:], order[:held]


def train(
    positive: Path,
    negative: Path,
    output: Path,
    cfg: ClassifierTrainConfig,
    text_field: str = "text",
    form: str = "NFC",
) -> dict[str, Any]:
    """Train on the two files minus a held-out share of each; write the model, report and held-out set."""
    import fasttext

    classes = []
    rng = np.random.default_rng(cfg.seed)
    for path, is_positive in ((positive, True), (negative, False)):
        texts = model_text(pc.utf8_normalize(pa.array(read_texts(path, text_field), pa.string()), form))
        if len(texts) < 2:
            raise UserError(f"{path}: at least two documents are needed (one to train on, one to hold out)")
        fit, held = _split(len(texts), cfg.holdout_fraction, rng)
        classes.append(([texts[i] for i in fit], [texts[i] for i in held], is_positive))
    names = {True: LABEL_PREFIX + cfg.label, False: f"{LABEL_PREFIX}not_{cfg.label}"}
    examples = [f"{names[p]} {text}" for fit, _, p in classes for text in fit]
    examples = [examples[i] for i in rng.permutation(len(examples))]
    output.mkdir(parents=True, exist_ok=True)
    train_file = output / "train.txt"
    write_text(train_file, "\n".join(examples) + "\n")
    try:
        model = fasttext.train_supervised(
            input=str(train_file),
            thread=1,
            seed=cfg.seed,
            dim=cfg.dim,
            epoch=cfg.epoch,
            lr=cfg.lr,
            wordNgrams=cfg.word_ngrams,
            minCount=cfg.min_count,
            bucket=cfg.bucket,
            loss="softmax",
            verbose=0,
        )
    except RuntimeError as exc:  # fastText's only training failure: "Encountered NaN."
        raise UserError(
            f"fastText training failed ({exc}): try another prep.quality_model.train.lr, dim or epoch"
        ) from None
    finally:
        train_file.unlink()
    with atomic_path(output / MODEL_FILE) as tmp:
        model.save_model(str(tmp))
    heldout = [(text, p) for _, held, p in classes for text in held]
    write_text(
        output / HELDOUT_FILE,
        "".join(json.dumps({"text": t, "label": p}, ensure_ascii=False) + "\n" for t, p in heldout),
    )
    report = {
        "label": cfg.label,
        "train_documents": len(examples),
        "heldout": evaluate(output / MODEL_FILE, output / HELDOUT_FILE, cfg.label, cfg.histogram_bins),
        "settings": cfg.model_dump(mode="json"),
        "positive_file": str(positive),
        "negative_file": str(negative),
    }
    write_json(output / REPORT_FILE, report)
    return report


def evaluate(model: Path, data: Path, label: str, bins: int = 10) -> dict[str, Any]:
    """Metrics of `model` on a labelled JSONL file: `text`, and `label` true/false, 1/0 or a class name."""
    texts, truth = [], []
    if not Path(data).is_file():
        raise UserError(f"{data} not found")
    for number, record in iter_records(data):
        value, text = record.get("label"), record.get("text")
        if not isinstance(text, str):
            raise UserError(f"{data}:{number}: no `text` string")
        if value not in (True, False, 0, 1, label, f"not_{label}", LABEL_PREFIX + label, f"{LABEL_PREFIX}not_{label}"):
            raise UserError(f"{data}:{number}: label must be true/false, 1/0, {label} or not_{label}; got {value!r}")
        texts.append(text)
        truth.append(value in (True, 1, label, LABEL_PREFIX + label))
    if not texts:
        raise UserError(f"{data}: no labelled record")
    scores = FastTextScorer(model, label).score(model_text(texts))
    return metrics(scores, np.array(truth), bins)
