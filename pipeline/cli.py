"""Command line: `crucible <verb> --config FILE [--set key=value ...]`.

Each verb loads the one config schema, applies `--set` overrides, does its work and ends with a
summary table. Config mistakes exit with status 2 and a message naming the key.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_prep import registry
from pipeline.config import ConfigError, CrucibleConfig, load_config
from pipeline.ground import storage
from pipeline.ground.errors import UserError
from pipeline.ground.names import CHECKPOINTS, LATEST, MANIFEST, METRICS_LOG, PREP_STATS
from training.config import SamplesConfig

if TYPE_CHECKING:
    from training.engine import Trainer

INTERRUPTED = 130  # the shell's status after Ctrl-C (128 + SIGINT)
RESUMABLE = ("prep", "prep-task", "train", "run")  # verbs whose rerun resumes (completion markers, checkpoints)


class UsageError(Exception):
    """A command line argparse refuses, raised instead of argparse's exit so that a rank under torchrun can
    hand it to the agent like any other user mistake."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="show third-party warnings and logs (every rank)")
    parser.add_argument("--config", type=_local_path, help="YAML config (default: built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set prep.workers=4 (repeatable)")


def _local_path(value: str) -> Path:
    """An argparse type for a file or folder this machine reads or writes in place: a URL is refused in one line."""
    if storage.is_remote(value):
        raise argparse.ArgumentTypeError(
            f"{value} is in object storage; this takes a local or shared path (object storage serves prep --input "
            f"and --output, train --data, --checkpoint and checkpoint.remote: see docs/cloud.md)")
    return Path(value)


def _stage_list(value: str) -> list[str]:
    stages = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in stages if s not in registry.names()]
    if unknown or not stages:
        what = f"unknown stage(s) {', '.join(unknown)}" if unknown else "no stage given"
        raise argparse.ArgumentTypeError(f"{what}; choose from {', '.join(registry.names())}")
    return stages


def _at_least(minimum: float, kind: type = int) -> Any:
    """An argparse type: a number of `kind` no smaller than `minimum`."""
    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return number
    return parse


def _probability(value: str) -> float:
    number = _at_least(0.0, float)(value)
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return number


CHECKPOINT_HELP = ("a checkpoint folder (RUN/checkpoints/step-N), or a run folder (of train, or of run: its train/) "
                   "for its newest loadable checkpoint, or an s3:// URL of either (a run's checkpoint.remote)")


def _version() -> str:
    """This install's version: pyproject's project.version, as the package metadata holds it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("crucible")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="crucible", description="Raw text to a trained language model.")
    parser.add_argument("--version", action="version", version=f"crucible {_version()}")
    verbs = parser.add_subparsers(dest="verb", required=True)

    prep = verbs.add_parser("prep", help="clean, deduplicate, label and filter documents")
    _common(prep)
    prep.add_argument("--input", dest="inputs", action="append", type=storage.as_location, default=[], metavar="PATH",
                      help="input file or folder, or its s3:// URL (repeatable; replaces prep.inputs)")
    prep.add_argument("--output", type=storage.as_location, required=True,
                      help="output folder, or an s3:// prefix to publish to (then --work is needed)")
    prep.add_argument("--work", type=_local_path, help="folder for step files, markers and the lock (default OUTPUT/work; "
                                               "local or shared disk)")
    prep.add_argument("--stages", type=_stage_list, help=f"comma-separated subset of {','.join(registry.names())}")
    prep.add_argument("--no-progress", action="store_true", help="hide progress bars")
    prep.add_argument("--executor", choices=["local", "ray"], help="where the tasks run (replaces prep.executor)")

    train = verbs.add_parser("train", help="train the GPT on packed shards (launch under torchrun)")
    _common(train)
    train.add_argument("--data", type=storage.as_location, required=True,
                       help="shards folder made by prep (with manifest.json), or its s3:// URL")
    train.add_argument("--output", type=_local_path, required=True, help="run folder: metrics, checkpoints")
    train.add_argument("--resume", default="auto", metavar="auto|none|PATH",
                       help="auto: continue from the run's latest good checkpoint (default); none: start fresh; "
                            "PATH: a checkpoint folder")

    generate = verbs.add_parser("generate", help="sample text from a checkpoint (KV cache), any training layout")
    _common(generate)
    generate.add_argument("--checkpoint", type=storage.as_location, required=True, help=CHECKPOINT_HELP)
    generate.add_argument("--prompt", dest="prompts", action="append", help="prompt text (repeatable; "
                          "replaces samples.prompts)")
    generate.add_argument("--tokenizer", type=_local_path, help="tokenizer.json (default: the one of the run's shards)")
    # Each flag given overrides its samples.* key; the defaults are the config's.
    generate.add_argument("--max-new-tokens", type=_at_least(1), help="default: samples.max_new_tokens")
    generate.add_argument("--temperature", type=_at_least(0.0, float), help="0 = greedy (default: samples.temperature)")
    generate.add_argument("--top-k", type=_at_least(1), help="default: samples.top_k")
    generate.add_argument("--top-p", type=_probability, help="default: samples.top_p")
    generate.add_argument("--seed", type=int, help="default: samples.seed")
    generate.add_argument("--chat", action="store_true", help="each prompt is a user message (or a JSON list of "
                          "messages) in the chat template; the answer stops at the end of the assistant's turn")

    export = verbs.add_parser("export", help="consolidate a checkpoint, or export it as a Hugging Face Llama model",
                              epilog="The hf format's generation_config.json carries the samples.* settings.")
    _common(export)
    export.add_argument("--checkpoint", type=storage.as_location, required=True, help=CHECKPOINT_HELP)
    export.add_argument("--output", type=_local_path, required=True)
    export.add_argument("--format", choices=["hf", "consolidated"], default="hf")
    export.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    export.add_argument("--tokenizer", type=_local_path, help="tokenizer.json (default: the one of the run's shards)")
    export.add_argument("--force", action="store_true", help="write into a non-empty --output folder")

    classifier = verbs.add_parser("classifier", help="train or evaluate a fastText quality classifier "
                                  "(settings: prep.quality_model.train)")
    _common(classifier)
    classifier.add_argument("action", choices=["train", "eval"])
    classifier.add_argument("--positive", type=_local_path, help="train: JSONL of documents to keep")
    classifier.add_argument("--negative", type=_local_path, help="train: JSONL of documents to drop")
    classifier.add_argument("--output", type=_local_path, help="train: folder for model.bin, report.json, heldout.jsonl")
    classifier.add_argument("--model", type=_local_path, help="eval: a model.bin, or the folder `classifier train` wrote")
    classifier.add_argument("--data", type=_local_path, help="eval: JSONL with `text` and `label` (true/false)")

    evaluate = verbs.add_parser("eval", help="score task files on a checkpoint (and with lm-evaluation-harness)",
                                epilog="A task's name is its file's stem. --harness needs the eval extra "
                                       "(pip install -e '.[eval]') and runs fully offline.")
    _common(evaluate)
    evaluate.add_argument("--checkpoint", type=storage.as_location, required=True, help=CHECKPOINT_HELP)
    evaluate.add_argument("--tasks", nargs="+", type=_local_path, metavar="FILE",
                          help="task files, JSONL or Parquet (default: eval.tasks)")
    evaluate.add_argument("--output", type=_local_path, help="write the results as JSON here")
    evaluate.add_argument("--tokenizer", type=_local_path, help="tokenizer.json (default: the one of the run's shards)")
    evaluate.add_argument("--heldout", action="store_true",
                          help="loss and perplexity on the validation split of the run's shards, per source and "
                               "per source/language where they are tagged")
    evaluate.add_argument("--data", type=storage.as_location,
                          help="with --heldout: the shards folder, or its s3:// URL (default: the checkpoint's)")
    evaluate.add_argument("--heldout-rows", type=_at_least(1), metavar="N",
                          help="with --heldout: score a seeded sample of N rows of each group (default: every row)")
    evaluate.add_argument("--harness", action="store_true",
                          help="also run lm-evaluation-harness on the Hugging Face export and compare")
    evaluate.add_argument("--hf", type=_local_path, help="with --harness: an existing export of this checkpoint "
                                                  "(default: export to a temporary folder)")

    _post_training_verbs(verbs)

    plan = verbs.add_parser("plan", help="memory per GPU, FLOPs and training time of a model and layout")
    _common(plan)
    plan.add_argument("--data", type=_local_path, help="shards folder: with train.mixture, the epochs of each source "
                                                "the token budget implies")

    run = verbs.add_parser("run", help="the whole job on this machine: prep, then training")
    _common(run)
    run.add_argument("--input", dest="inputs", action="append", type=storage.as_location, default=[], metavar="PATH",
                     help="input file or folder, or its s3:// URL (repeatable; replaces prep.inputs)")
    run.add_argument("--output", type=_local_path, required=True, help="run folder")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")

    submit = verbs.add_parser("submit", help="the whole job on Slurm: prep array jobs, then training")
    _common(submit)
    submit.add_argument("--input", dest="inputs", action="append", type=storage.as_location, default=[], metavar="PATH",
                        help="input file or folder, or its s3:// URL (repeatable; replaces prep.inputs)")
    submit.add_argument("--output", type=_local_path, required=True,
                        help="run folder on a filesystem the nodes share (data/, train/, slurm/)")
    submit.add_argument("--dry-run", action="store_true", help="write the scripts and show the chain; submit nothing")
    submit.add_argument("--prep-only", action="store_true", help="submit data prep without the training job")

    status = verbs.add_parser("status", help="where a run stands: prep steps and tasks, training step, checkpoints")
    status.add_argument("--output", type=_local_path, required=True, help="a run folder (from run, submit, prep or train)")

    task = verbs.add_parser("prep-task", help="one piece of a scheduled prep run (what the Slurm jobs call)")
    _common(task)
    task.add_argument("--output", type=_local_path, required=True, help="prep output folder")
    action = task.add_mutually_exclusive_group(required=True)
    action.add_argument("--step", help="run one task of this step (with --task)")
    action.add_argument("--prepare", action="store_true", help="clear step folders made with another config")
    action.add_argument("--publish", action="store_true", help="publish clean/, shards/, stats.json")
    task.add_argument("--task", type=int, help="task index within the step")
    return parser


def _post_training_verbs(verbs: Any) -> None:
    """`sft` and `dpo`: post-training of a checkpoint on the pretraining trainer (launch under torchrun for layouts)."""
    for verb, what, data in (("sft", "supervised fine-tuning on chat data (loss on the assistant's tokens)",
                              'chat JSONL: {"messages": [{"role", "content"}, ...]} a line'),
                             ("dpo", "direct preference optimization on preference pairs (sigmoid loss, post.dpo.beta)",
                              'preference JSONL: {"prompt": ..., "chosen": ..., "rejected": ...} a line (TRL\'s layout)')):
        parser = verbs.add_parser(verb, help=what)
        _common(parser)
        parser.add_argument("--checkpoint", type=storage.as_location, required=True, help=f"the model to start from: {CHECKPOINT_HELP}")
        parser.add_argument("--data", type=storage.as_location, required=True, help=f"{data}; a file or an s3:// URL")
        parser.add_argument("--output", type=_local_path, required=True, help="run folder: data/, metrics, checkpoints")
        parser.add_argument("--resume", default="auto", metavar="auto|none|PATH",
                            help="auto: continue from the run's latest good checkpoint (default); none: start fresh")


def _post_train(config: CrucibleConfig, args: argparse.Namespace) -> int:
    """`sft` or `dpo`: RUN/data built from --data and the checkpoint, then the trainer from the checkpoint's weights."""
    from training.dpo import DPOTrainer, build_dpo_data
    from training.engine import Trainer
    from training.post import build_sft_data, prepare

    build, trainer_class = {"sft": (build_sft_data, Trainer), "dpo": (build_dpo_data, DPOTrainer)}[args.verb]
    base = _checkpoint_in(args.checkpoint, config)
    post_config, shards, weights = prepare(args.verb, config, base, _tokenizer_of(base, None), args.data, args.output,
                                           build)
    return _train(post_config, shards, args.output, args.resume, weights, trainer_class)


def _load(args: argparse.Namespace) -> CrucibleConfig:
    """The config with the flags that replace its keys (--input, --stages, --executor) applied as overrides,
    so the schema checks them like any --set."""
    replaced = [(key, [str(value) for value in getattr(args, flag)]) for key, flag in
                (("prep.inputs", "inputs"), ("prep.stages", "stages")) if getattr(args, flag, None)]
    executor = [("prep.executor", args.executor)] if getattr(args, "executor", None) else []
    return load_config(args.config, args.overrides, dict(replaced + executor))


def _prep(config: CrucibleConfig, output: storage.Location, show_progress: bool, then: str | None = None,
          settings: str = "", work: Path | None = None) -> int:
    """Run (or finish) prep into `output`; returns the number of tasks it ran."""
    import time

    from pipeline.prep import pending_task_count, run_prep
    from pipeline.prep_yield import check_yield
    from pipeline.summary import print_prep_summary

    started, todo = time.perf_counter(), pending_task_count(config.prep, output, work)
    stats = run_prep(config.prep, output, show_progress, work)
    print_prep_summary(stats)
    folders = ["clean/", "dropped/", "quarantine/", PREP_STATS] + ["tokenizer/"] * ("tokens" in stats)
    folders += ["shards/"] * storage.exists(storage.join(output, "shards", MANIFEST))
    redone = "nothing redone: every task was done already" if todo == 0 else f"{todo:,} task(s) run"
    print(f"prep finished in {time.perf_counter() - started:.1f} s ({redone}); outputs in {output}: {', '.join(folders)}")
    check_yield(config.prep, output, stats)
    if then is None and "shards/" in folders:
        print(f"next: crucible train{settings} --data {storage.join(output, 'shards')} --output RUN (several processes: "
              f"python -m launch.agent --nproc_per_node N -m pipeline train ...)")
    return todo


def _train(config: CrucibleConfig, data: Path, output: Path, resume: str, initial_weights: Any = None,
           trainer_class: Any = None) -> int:
    import os
    import time

    from training.engine import Trainer

    rank0 = int(os.environ.get("RANK", 0)) == 0
    warning = config.train.warmup_warning()
    if warning and rank0:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    trainer = (trainer_class or Trainer)(config, data, output, int(os.environ.get("WORLD_SIZE", 1)), resume,
                                         initial_weights)
    records = trainer.fit()
    if rank0:
        _print_training_end(trainer, records, output, time.perf_counter() - started)
    return _train_status(trainer, rank0)


def _print_training_end(trainer: Trainer, records: list[dict[str, Any]], output: Path, seconds: float) -> None:
    """How training ended (finished, interrupted, stopped by a signal, or nothing to do) and what comes next."""
    max_steps = trainer.config.train.max_steps
    latest = trainer.checkpointer.latest()
    last = records[-1] if records else {}
    loss = f", loss {last['loss']:.4f}" if "loss" in last else ""
    checkpoint = f"latest checkpoint: {latest.path if latest else 'none'}"
    if not records and trainer.stopped_by is None:  # a rerun of a finished run
        print(f"nothing to train: {output} is at step {trainer.step} of train.max_steps={max_steps} already (raise it "
              f"to train on); {checkpoint}")
        return
    how = {None: "finished", "SIGINT": "interrupted"}.get(trainer.stopped_by, "stopped")
    print(f"training {how} in {seconds:.1f} s at step {trainer.step} of {max_steps}{loss}; metrics in "
          f"{output / METRICS_LOG}; {checkpoint}")
    if latest and trainer.stopped_by is None:
        print(f"next: crucible generate --checkpoint {latest.path} --prompt TEXT; crucible export --checkpoint "
              f"{latest.path} --output DIR; crucible status --output {output}")
    if "mlflow" in trainer.config.train.loggers:
        from training.trackers import mlflow_hint

        print(mlflow_hint(trainer.run_dir, trainer.config.train.tracking))


def _train_status(trainer: Trainer, rank0: bool) -> int:
    """0 when the run finished, or a Slurm job's script is to requeue it; else 128 + the number of the signal that
    stopped it early, as a shell reports a process the signal ended. Under launch.agent the agent exits with it and
    every rank with 0: torchrun would take a rank's non-zero exit for a failure and stop the others mid-way."""
    import signal

    from launch.agent import record_stop

    if trainer.stopped_by is None or trainer.requeued:
        return 0
    status = 128 + signal.Signals[trainer.stopped_by]
    return 0 if not rank0 or record_stop(status) else status


def _tokenizer_of(checkpoint: Path, given: Path | None) -> Path:
    """The tokenizer `checkpoint` was trained with: another one's ids would decode to garbage."""
    from pipeline.ground.hashing import file_sha256
    from training.checkpoint_meta import read_meta, tokenizer_record

    meta = read_meta(checkpoint)
    record = tokenizer_record(meta)
    path = given or Path(meta.data_dir) / record.file
    if given is None and storage.is_remote(meta.data_dir):  # trained from shards on object storage
        from training.shard_cache import cache_root

        path = cache_root() / "tokenizers" / f"{record.sha256}.json"
        if not path.is_file():
            storage.download(storage.join(meta.data_dir, record.file), path)
    if given and not given.is_file():
        raise UserError(f"--tokenizer {given} is {'a folder' if given.is_dir() else 'not found'}: give the run's "
                        f"tokenizer.json")
    if not path.is_file():
        raise UserError(f"tokenizer {path} not found: pass --tokenizer")
    if file_sha256(path) != record.sha256:
        raise UserError(f"tokenizer {path} is not the one {checkpoint} was trained with (its SHA-256 differs from "
                        f"the recorded {record.sha256[:12]}...): pass that run's tokenizer.json with --tokenizer")
    return path


SAMPLING_FLAGS = ("prompts", "max_new_tokens", "temperature", "top_k", "top_p", "seed")  # generate's, as samples.*


def _checkpoint_in(path: storage.Location, config: CrucibleConfig) -> Path:
    """A checkpoint folder from what a user points at: the folder itself, `latest`, a run's
    `checkpoints/` folder or the run folder (then its newest loadable checkpoint); the folder of
    `crucible run` holds its training run in train/. A URL is a remote checkpoint, or a run's
    checkpoint.remote (its newest complete one), downloaded into this machine's cache."""
    from pipeline.ground.names import CHECKPOINT_META
    from training.checkpoint import Checkpointer

    if storage.is_remote(path):
        from training.remote_checkpoints import remote_checkpoint
        from training.shard_cache import cache_root

        return remote_checkpoint(path, cache_root() / "checkpoints", config.checkpoint)
    if (path / CHECKPOINT_META).exists() or not path.exists():
        return path
    run = path.parent.parent if path.name == LATEST else path.parent if path.name == CHECKPOINTS else path
    if not (run / CHECKPOINTS).is_dir() and (run / "train" / CHECKPOINTS).is_dir():
        run = run / "train"
    latest = Checkpointer(run, config.checkpoint, rank=0).newest_loadable()
    if latest is None:
        steps = sorted(p.name for p in (run / CHECKPOINTS).glob("step-*"))
        raise UserError(f"{path} holds no loadable checkpoint" + (f" (folders: {', '.join(steps[-3:])})" if steps else
                        "; point --checkpoint at RUN/checkpoints/step-N or at a run folder"))
    return latest.path


def _run_samples(checkpoint: Path, config: CrucibleConfig) -> SamplesConfig:
    """The sampling settings the run was trained with (saved in its checkpoints), under the samples.* keys that
    this command's --config and --set give: a run's own prompts and temperature without repeating its config."""
    from pydantic import ValidationError

    from training.checkpoint_meta import read_meta

    saved = read_meta(checkpoint).config.samples  # empty in checkpoints saved before they were kept
    given = config.samples.model_dump(mode="json", include=config.samples.model_fields_set)
    try:
        return SamplesConfig.model_validate(saved | given)
    except ValidationError as exc:
        raise UserError(f"{checkpoint}: the samples settings saved with it are not valid ({exc.errors()[0]['msg']}); "
                        f"give them with --config or --set samples.*") from None


def _generate(config: CrucibleConfig, args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from pipeline.summary import print_samples
    from training.generate import sample_texts

    args.checkpoint = _checkpoint_in(args.checkpoint, config)

    samples = _run_samples(args.checkpoint, config)
    for key in SAMPLING_FLAGS:
        if getattr(args, key) is not None:
            try:
                setattr(samples, key, getattr(args, key))  # validated on assignment, like --set
            except ValidationError as exc:
                flag = "--prompt" if key == "prompts" else "--" + key.replace("_", "-")
                raise UserError(f"{flag} {getattr(args, key)}: {exc.errors()[0]['msg']}") from None
    print_samples(sample_texts(args.checkpoint, _tokenizer_of(args.checkpoint, args.tokenizer), samples, args.chat),
                   f"samples from {args.checkpoint.name}")


def _export(config: CrucibleConfig, args: argparse.Namespace) -> None:
    import torch

    from training.export import prepare_output, save_consolidated, save_hf

    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    args.checkpoint = _checkpoint_in(args.checkpoint, config)
    prepare_output(args.output, args.force)
    if args.format == "hf":
        path = save_hf(args.checkpoint, args.output, _tokenizer_of(args.checkpoint, args.tokenizer), dtype,
                       _run_samples(args.checkpoint, config))
    else:
        path = save_consolidated(args.checkpoint, args.output, dtype)
    print(f"exported {args.checkpoint} -> {path} ({args.format}, {args.dtype})")
    if args.format == "hf":
        print(f"next: transformers.AutoModelForCausalLM.from_pretrained({str(path)!r}) with "
              f"AutoTokenizer.from_pretrained of the same folder; crucible eval --checkpoint {args.checkpoint} "
              f"--tasks FILE --harness scores it with lm-evaluation-harness")
    else:
        print(f"next: safetensors.torch.load_file({str(path)!r}) gives the state dict; the model config and step "
              f"are in its metadata")


def _classifier(config: CrucibleConfig, args: argparse.Namespace) -> None:
    from data_prep.classifier import MODEL_FILE, REPORT_FILE, evaluate, train
    from pipeline.summary import print_classifier

    settings = config.prep.quality_model.train
    needed = ("positive", "negative", "output") if args.action == "train" else ("model", "data")
    missing = [f"--{name}" for name in needed if getattr(args, name) is None]
    if missing:
        raise UserError(f"classifier {args.action} needs {' '.join(missing)}")
    if args.action == "train":
        report = train(args.positive, args.negative, args.output, settings, config.prep.read.text_field,
                       config.prep.normalize.form)
        model = args.output / MODEL_FILE
        print_classifier(report["heldout"], f"held-out documents ({report['train_documents']:,} trained on)")
        print(f"model: {model}; these figures and the settings: {args.output / REPORT_FILE}")
    else:
        model = args.model / MODEL_FILE if args.model.is_dir() else args.model  # the folder `train` wrote
        print_classifier(evaluate(model, args.data, settings.label, settings.histogram_bins), f"{args.data}")
    check = f"crucible classifier eval --model {model} --data LABELLED.jsonl; " if args.action == "train" else ""
    print(f"next: {check}filter prep with it: add quality_model to prep.stages and set prep.quality_model.classifiers: "
          f"[{{name: {settings.label}, model_path: {model}, label: {settings.label}, threshold: 0.5}}]")


HARNESS_AGREEMENT = 1e-3  # log-likelihood; fp32 exports of the same weights agree to ~1e-5


def _eval(config: CrucibleConfig, args: argparse.Namespace) -> None:
    import tempfile

    import torch

    from pipeline.ground.atomic import write_json
    from pipeline.summary import print_heldout, print_task_results
    from training.evaluate import evaluate_checkpoint, heldout_loss
    from training.checkpoint_meta import read_meta
    from training.export import save_hf
    from training.tasks import load_tasks

    for flag, needs in (("data", "heldout"), ("heldout_rows", "heldout"), ("hf", "harness")):
        if getattr(args, flag) is not None and not getattr(args, needs):
            raise UserError(f"--{flag.replace('_', '-')} applies with --{needs}: add --{needs}, or drop it")
    folders = [path for path in args.tasks or [] if path.is_dir()]
    if folders:
        raise UserError(f"--tasks {folders[0]} is a folder: give its task files, e.g. {folders[0]}/*.jsonl")
    if args.hf is not None and not (args.hf / "config.json").is_file():
        raise UserError(f"--hf {args.hf} is not a Hugging Face export (no config.json): make one with crucible "
                        f"export --checkpoint {args.checkpoint} --output {args.hf}, or drop --hf")
    args.checkpoint = _checkpoint_in(args.checkpoint, config)
    tasks = load_tasks(args.tasks or config.eval.tasks, config.eval.max_items)
    if not tasks and (args.harness or not args.heldout):
        raise UserError("no task files: pass --tasks FILE [FILE ...] or set eval.tasks"
                        + ("" if args.harness else ", or ask for --heldout"))
    meta = read_meta(args.checkpoint)
    report: dict[str, Any] = {"checkpoint": str(args.checkpoint), "step": meta.step}
    if args.heldout:
        data = args.data or storage.as_location(meta.data_dir)
        report["heldout"] = heldout_loss(args.checkpoint, data, config.train.shard_cache, args.heldout_rows)
        print_heldout(report["heldout"], f"held-out loss at step {report['step']} ({storage.join(data, 'val')})")
    if tasks:
        tokenizer = _tokenizer_of(args.checkpoint, args.tokenizer)
        ours = evaluate_checkpoint(args.checkpoint, tasks, tokenizer)
        report["tasks"] = {name: {k: v for k, v in r.items() if k != "requests"} for name, r in ours.items()}
        print_task_results(report["tasks"], f"tasks at step {report['step']} ({args.checkpoint})")
    if args.harness:
        from training.harness import run_harness

        with tempfile.TemporaryDirectory() as tmp:
            hf = args.hf or save_hf(args.checkpoint, Path(tmp) / "hf", tokenizer, torch.float32, config.samples)
            theirs = run_harness(hf, tasks, config.eval.max_items)
        report["harness"] = {name: {k: v for k, v in r.items() if k != "requests"} | {"max_abs_ll_difference": max(
            abs(a[0] - b[0]) for a, b in zip(ours[name]["requests"], r["requests"]))} for name, r in theirs.items()}
        print_task_results(report["harness"], "lm-evaluation-harness on the Hugging Face export")
        apart = max(r["max_abs_ll_difference"] for r in report["harness"].values())
        if apart > HARNESS_AGREEMENT:
            print(f"warning: the harness and Crucible differ by up to {apart:.3g} in log-likelihood (an fp32 export "
                  f"of the same weights agrees within {HARNESS_AGREEMENT:g}): is --hf an fp32 export of "
                  f"{args.checkpoint}?",
                  file=sys.stderr)
    if args.output:
        write_json(args.output, report)
        print(f"results: {args.output}")
    else:
        print("next: add --output results.json to keep these figures")


def _same_settings(args: argparse.Namespace) -> str:
    """The --config and --set flags of this command, for the next command to run with the same settings."""
    import shlex

    flags = (["--config", str(args.config)] if args.config else []) + [
        arg for assignment in args.overrides for arg in ("--set", assignment)]
    return "".join(f" {shlex.quote(flag)}" for flag in flags)


def _preflight(config: CrucibleConfig, train_dir: Path) -> None:
    """What `run` and `submit` can refuse before prep: the layout, a run folder of another model, the disk."""
    from training.config import check_layout
    from training.plan import count_params, padded_vocab
    from training.preflight import check_disk, check_same_model

    check_layout(config.model, config.parallel, config.train, config.launch.nproc_per_node * config.launch.nnodes)
    check_same_model(train_dir, config.model.model_dump(mode="json"), "auto")
    vocab = padded_vocab(config.model.vocab_size or config.prep.tokenizer.vocab_size, config.model.vocab_multiple,
                         config.parallel.tp)
    if config.checkpoint.enabled:
        check_disk(train_dir, count_params(config.model, vocab), config.checkpoint.keep_last)


def _run(config: CrucibleConfig, args: argparse.Namespace, show_progress: bool) -> int:
    """prep, then training under torchrun on this machine, in one run folder."""
    import signal
    import subprocess

    from launch.torchrun import local_train_command
    from pipeline.ground.markers import read_jsonl
    from pipeline.ground.names import CHECKPOINT_META
    from pipeline.report import build_report, learning_line, unigram_entropy
    from pipeline.run_times import RUN_TIMES, PhaseTimes
    from pipeline.summary import print_post_demo, print_samples, print_task_results, task_results
    from pipeline.post_demo import RESULTS as POST_RESULTS
    from pipeline.post_demo import run_post_demo
    from pipeline.toy_world import final_checkpoint, toy_generations, train_toy_world
    from training.checkpoint import Checkpointer
    from training.generate import sample_texts

    _preflight(config, args.output / "train")
    data = args.output / "data"
    checkpoints = Checkpointer(args.output / "train", config.checkpoint, rank=0)
    times = PhaseTimes(args.output / RUN_TIMES)
    with times.phase("prep") as worked:
        worked(_prep(config, data, show_progress, then="train") > 0)
    command = local_train_command(config.launch, args.config, args.overrides, data / "shards", args.output / "train")
    print(f"training: {config.launch.nproc_per_node} process(es) under torchrun", flush=True)
    before = checkpoints.latest()
    with times.phase("training") as worked:
        torchrun = subprocess.Popen(command)
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches torchrun too: it has the ranks save
        try:
            returncode = torchrun.wait()
        finally:
            signal.signal(signal.SIGINT, previous)
        latest = checkpoints.latest()
        worked(latest is not None and (before is None or latest.step != before.step))
    if returncode != 0:
        return returncode
    samples = sample_texts(latest.path, _tokenizer_of(latest.path, None), config.samples) if latest else []
    toy: list[tuple[str, str]] = []
    if config.run.toy_world:
        with times.phase("toy world") as worked:
            worked(not (final_checkpoint(args.output / "toy_world") / CHECKPOINT_META).exists())
            toy = toy_generations(train_toy_world(args.output / "toy_world"))
    post: dict[str, Any] = {}
    if config.run.post_training and latest:
        with times.phase("post-training") as worked:
            worked(not (args.output / "post" / POST_RESULTS).exists())
            post = run_post_demo(args.output / "post", latest.path, _tokenizer_of(latest.path, None))
    timings = times.seconds
    entropy = unigram_entropy(data / "shards")
    report = build_report(args.output, samples, config, timings, toy, entropy, post)
    metrics = read_jsonl(args.output / "train" / METRICS_LOG)
    learning = learning_line(metrics, entropy)
    print_samples(samples, "samples from the final checkpoint" + (f": {learning}" if learning else ""))
    if toy:
        print_samples(toy, "the toy world (greedy, 10 words, d_model 4): each line should be a sentence of its corpus")
    results, eval_seconds = task_results(metrics)
    if results:
        print_task_results(results, "tasks at the last evaluation")
        print(f"task evaluation: {eval_seconds:.1f} s of the {timings['training']:.1f} s of training, "
              f"not counted in tokens/s")
    if post:
        print_post_demo(post)
    phases = ", ".join(f"{name} {timings[name]:.0f} s" for name in
                       ["prep", "training"] + ["toy world"] * bool(toy) + ["post-training"] * bool(post))
    print(f"run finished: {phases}; report: {report} (and report.md)")
    if latest:
        print(f"next: crucible generate --checkpoint {latest.path} --prompt TEXT; crucible status --output "
              f"{args.output}; open {report}")
    return 0


def _prep_task(config: CrucibleConfig, args: argparse.Namespace) -> None:
    from pipeline.prep import prepare_steps, publish_prep, run_prep_task
    from pipeline.prep_yield import check_yield
    from pipeline.summary import print_prep_summary

    if args.prepare:
        pending = prepare_steps(config.prep, args.output)
        print(f"prepared {len(pending)} steps; tasks to run: {sum(map(len, pending.values())):,}")
    elif args.publish:
        stats = publish_prep(config.prep, args.output)
        print_prep_summary(stats)
        check_yield(config.prep, args.output, stats)  # a failed publish job holds back the training job
    elif args.task is None:
        raise UserError("--step needs --task INDEX")
    else:
        print(run_prep_task(config.prep, args.output, args.step, args.task), flush=True)


def _submit(config: CrucibleConfig, args: argparse.Namespace) -> None:
    from pipeline.executors.slurm import submit
    from pipeline.summary import print_jobs

    _preflight(config, args.output / "train")  # before a job is queued: on a cluster, training would fail after prep
    jobs = submit(config, args.output, dry_run=args.dry_run, prep_only=args.prep_only)
    print_jobs(jobs, args.output / "slurm", args.dry_run)


def _status(args: argparse.Namespace) -> None:
    from launch.sbatch import RunPaths
    from pipeline.executors.ray import ray_status
    from pipeline.executors.slurm import status
    from pipeline.status import local_status
    from pipeline.summary import print_local_status, print_status

    if RunPaths(args.output.resolve(), Path.cwd(), sys.executable).config.exists():
        print_status(*status(args.output))
        return
    found = local_status(args.output)
    on_ray = ray_status(found.prep) if found.prep else None
    if on_ray:
        print_status(on_ray[0], None)
        print(on_ray[1])
        found.prep = None  # shown
    print_local_status(found)


def _user_error(verb: str, message: str) -> int:
    """Print a user's mistake as one line; a training rank under `launch.agent` leaves it to the agent,
    which prints it once for all ranks."""
    from launch.agent import record_user_error

    if not (verb in ("train", "sft", "dpo") and record_user_error(message)):
        print(message, file=sys.stderr)
    return 2


def _check_outputs(args: argparse.Namespace, config: CrucibleConfig | None) -> None:
    """A file or an unwritable place where a verb will write, or prep's outputs where it reads its inputs,
    is one line before any work."""
    from pipeline.ground.folders import check_output_file, make_output_folder

    if args.verb in ("prep", "run", "submit", "prep-task"):  # all of a run folder is output, not only data/
        from pipeline.prep import check_output_apart

        check_output_apart(config.prep, args.output)  # type: ignore[union-attr]
        if getattr(args, "work", None):
            check_output_apart(config.prep, args.work, "--work")  # type: ignore[union-attr]
            make_output_folder(args.work, "--work")
    if storage.is_remote(getattr(args, "output", None)):
        from pipeline.prep import work_folder

        work_folder(args.output, args.work)  # the missing --work, before any work
    elif args.verb in ("prep", "train", "run", "submit", "prep-task", "sft", "dpo") or (args.verb == "classifier" and args.action == "train" and args.output):
        make_output_folder(args.output)
    elif args.verb == "eval" and args.output:
        check_output_file(args.output)


def _leave_process_groups() -> None:
    """Tear down the process groups a verb joined (training's, or the world of one that generate, eval and
    run's samples need) while the interpreter is whole: left to its exit, gloo's threads can abort it."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        from training.parallel import shutdown_distributed

        shutdown_distributed()


def main(argv: list[str] | None = None) -> int:
    import os

    from pipeline.ground.quiet import VERBOSE_ENV, quiet_third_party

    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return _user_error(str(exc).split(":")[0].removeprefix("crucible "), str(exc))
    if getattr(args, "verbose", False):
        os.environ[VERBOSE_ENV] = "1"  # torchrun's ranks inherit it
    quiet_third_party()
    try:
        config = _load(args) if args.verb != "status" else None
    except ConfigError as exc:
        return _user_error(args.verb, f"crucible: {exc}")
    show_progress = not getattr(args, "no_progress", False)
    if config is not None:
        storage.configure(config.storage)
    try:
        _check_outputs(args, config)
        if args.verb == "prep":
            _prep(config, args.output, show_progress, settings=_same_settings(args), work=args.work)
        elif args.verb == "train":
            return _train(config, args.data, args.output, args.resume)
        elif args.verb in ("sft", "dpo"):
            return _post_train(config, args)
        elif args.verb == "plan":
            from pipeline.plan_view import print_plan

            print_plan(config, args.data, _same_settings(args))
        elif args.verb == "classifier":
            _classifier(config, args)
        elif args.verb == "eval":
            _eval(config, args)
        elif args.verb == "generate":
            _generate(config, args)
        elif args.verb == "export":
            _export(config, args)
        elif args.verb == "run":
            return _run(config, args, show_progress)
        elif args.verb == "submit":
            _submit(config, args)
        elif args.verb == "status":
            _status(args)
        elif args.verb == "prep-task":
            _prep_task(config, args)
    except UserError as exc:
        return _user_error(args.verb, f"crucible {args.verb}: {exc}")
    except KeyboardInterrupt:  # Ctrl-C outside training's own handling (which saves first), or a second one
        if int(os.environ.get("RANK", 0)) == 0:
            resumes = "; the same command goes on from what was finished" if args.verb in RESUMABLE else ""
            print(f"crucible {args.verb}: interrupted{resumes}", file=sys.stderr)
        return INTERRUPTED
    finally:
        _leave_process_groups()
    return 0
