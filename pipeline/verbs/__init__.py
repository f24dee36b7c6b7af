"""The verb table: each verb of `crucible` is a module here, and this table is the one list of them.

The command line's parser, its help, the dispatch and the per-verb rules of the front door (which
verbs resume, which run as training ranks, what `--output` is) all come from it. Adding a verb:
write its module (`add_arguments` and `run`), then add one `Verb` line below.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pipeline.verbs.classifier as classifier
import pipeline.verbs.evaluate as evaluate
import pipeline.verbs.export as export
import pipeline.verbs.generate as generate
import pipeline.verbs.plan as plan
import pipeline.verbs.post_train as post_train
import pipeline.verbs.prep as prep
import pipeline.verbs.prep_task as prep_task
import pipeline.verbs.run as run
import pipeline.verbs.status as status
import pipeline.verbs.submit as submit
import pipeline.verbs.train as train

if TYPE_CHECKING:
    from pipeline.config import CrucibleConfig


@dataclass(frozen=True)
class Verb:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, CrucibleConfig], int | None]
    epilog: str | None = None
    takes_config: bool = True  # --config and --set (status reads a run folder only)
    resumable: bool = False  # a rerun goes on from completion markers or checkpoints
    ranked: bool = False  # runs as ranks under launch.agent, which reports a user error once for all of them
    output: Literal["folder", "file"] | None = None  # what --output is, when given: made or checked before any work
    prep_output: bool = False  # --output holds prep's outputs: it must not overlap its inputs


VERBS = [
    Verb(
        "prep",
        "clean, deduplicate, label and filter documents",
        prep.add_arguments,
        prep.run,
        resumable=True,
        output="folder",
        prep_output=True,
    ),
    Verb(
        "train",
        "train the GPT on packed shards (launch under torchrun)",
        train.add_arguments,
        train.run,
        resumable=True,
        ranked=True,
        output="folder",
    ),
    Verb(
        "generate",
        "sample text from a checkpoint (KV cache), any training layout",
        generate.add_arguments,
        generate.run,
    ),
    Verb(
        "export",
        "consolidate a checkpoint, or export it as a Hugging Face Llama model",
        export.add_arguments,
        export.run,
        epilog="The hf format's generation_config.json carries the samples.* settings.",
    ),
    Verb(
        "classifier",
        "train or evaluate a fastText quality classifier (settings: prep.quality_model.train)",
        classifier.add_arguments,
        classifier.run,
        output="folder",
    ),
    Verb(
        "eval",
        "score task files on a checkpoint (and with lm-evaluation-harness)",
        evaluate.add_arguments,
        evaluate.run,
        epilog="A task's name is its file's stem. --harness needs the eval extra "
        "(pip install -e '.[eval]') and runs fully offline.",
        output="file",
    ),
    Verb(
        "sft",
        "supervised fine-tuning on chat data (loss on the assistant's tokens)",
        post_train.arguments_for(post_train.SFT_DATA),
        post_train.run,
        ranked=True,
        output="folder",
    ),
    Verb(
        "dpo",
        "direct preference optimization on preference pairs (sigmoid loss, post.dpo.beta)",
        post_train.arguments_for(post_train.DPO_DATA),
        post_train.run,
        ranked=True,
        output="folder",
    ),
    Verb("plan", "memory per GPU, FLOPs and training time of a model and layout", plan.add_arguments, plan.run),
    Verb(
        "run",
        "the whole job on this machine: prep, then training",
        run.add_arguments,
        run.run,
        resumable=True,
        output="folder",
        prep_output=True,
    ),
    Verb(
        "submit",
        "the whole job on Slurm: prep array jobs, then training",
        submit.add_arguments,
        submit.run,
        output="folder",
        prep_output=True,
    ),
    Verb(
        "status",
        "where a run stands: prep steps and tasks, training step, checkpoints",
        status.add_arguments,
        status.run,
        takes_config=False,
    ),
    Verb(
        "prep-task",
        "one piece of a scheduled prep run (what the Slurm jobs call)",
        prep_task.add_arguments,
        prep_task.run,
        resumable=True,
        output="folder",
        prep_output=True,
    ),
]
BY_NAME = {verb.name: verb for verb in VERBS}
