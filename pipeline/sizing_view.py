"""What `crucible plan` prints: memory per GPU, FLOPs and time of a model and layout, the epochs of
each source a mixture draws, and what training would refuse. Arithmetic only: nothing loads torch."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from data_prep.pack import PACK
from pipeline.config import CrucibleConfig
from pipeline.ground.console import console
from pipeline.ground.errors import UserError

COUNT_UNITS = (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3), ("", 1.0))  # 5.0M, 1.04B parameters
BYTE_UNITS = ((" TB", 1e12), (" GB", 1e9), (" MB", 1e6), (" KB", 1e3), (" B", 1.0))


def _scaled(n: float, units: tuple[tuple[str, float], ...]) -> str:
    """`n` in the largest unit it reaches, to three significant digits: the units people say."""
    unit, size = next(((u, s) for u, s in units if n >= s), units[-1])
    return f"{n / size:.3g}{unit}"


def _count(n: float) -> str:
    return _scaled(n, COUNT_UNITS)


def _bytes(n: float) -> str:
    return _scaled(n, BYTE_UNITS)


def run_shape(config: CrucibleConfig) -> tuple[int, int, list[str]]:
    """The sequence length and global batch (sequences) the plan is for, and the `key=value` settings a model
    preset supplied where the config gives neither: a 7b planned with the tiny run's 256 x 8 tokens a step
    would take 488 million steps for 1T tokens."""
    from training.config import PRESET_RUNS

    seq_len, batch = config.plan_seq_len(), config.train.global_batch_size
    filled: list[str] = []
    typical = PRESET_RUNS.get(config.model.preset or "")
    if typical is None:
        return seq_len, batch, filled
    if not (config.plan.seq_len or config.train.seq_len or "seq_len" in config.prep.section(PACK).model_fields_set):
        seq_len = typical[0]
        filled.append(f"prep.pack.seq_len={seq_len}")
    if "global_batch_size" not in config.train.model_fields_set:
        batch = typical[1]
        filled.append(f"train.global_batch_size={batch}")
    return seq_len, batch, filled


def _print_mixture(config: CrucibleConfig, data: Path | None, steps: int, batch: int) -> None:
    """Epochs of each source the mixture draws over the token budget; a warning where one passes its cap."""
    from data_prep.shards import read_manifest
    from training.data import UNTAGGED, source_sizes
    from training.mixture import plan_epochs

    mixture = config.train.mixture
    assert mixture is not None  # print_plan calls this only when train.mixture is set
    out = console()
    if data is None:
        out.print(
            "[yellow]note:[/] train.mixture is set: give --data SHARDS to see how many epochs of each source "
            "the token budget draws"
        )
        return
    rows, tokens = source_sizes(read_manifest(data))
    if not rows:
        raise UserError(f"{data}: {UNTAGGED}")
    table = Table(title=f"mixture over {config.plan.token_budget:.3g} tokens ({steps:,} steps)")
    for column in ("source", "rows", "share of tokens", "epochs", "max epochs"):
        table.add_column(column, justify="left" if column == "source" else "right")
    entries = plan_epochs(mixture, rows, tokens, steps, batch)
    for e in entries:
        table.add_row(
            e["source"],
            f"{e['rows']:,}",
            f"{e['share']:.1%}",
            f"{e['epochs']:,.2f}",
            "-" if e["max_epochs"] == float("inf") else f"{e['max_epochs']:g}",
        )
    out.print(table)
    for e in entries:
        if e["epochs"] > e["max_epochs"]:
            out.print(
                f"[bold red]warning:[/] source {e['source']} would be drawn {e['epochs']:,.2f} times, over its cap "
                f"of {e['max_epochs']:g} epochs (train.mixture.max_epochs): training would refuse this run"
            )


def print_plan(config: CrucibleConfig, data: Path | None, settings: str) -> None:
    """The plan table, the notes on what would not fit or be refused, and the next command (with `settings`,
    the --config and --set flags given)."""
    from training.config import LayoutError, check_batch, check_shapes
    from training.sizing import RECOMPUTE_COMPUTE, estimate

    gpus = config.plan_gpus()
    seq_len, batch, filled = run_shape(config)
    train = config.train.model_copy(update={"global_batch_size": batch})
    settings += "".join(f" --set {assignment}" for assignment in filled)  # the next command runs what was planned
    model_parallel = config.parallel.tp * config.parallel.pp
    if gpus % model_parallel:
        raise UserError(
            f"plan assumes {gpus} GPU(s) (plan.gpus, else launch.nproc_per_node x launch.nnodes), not a "
            f"multiple of tp*pp = {model_parallel}: e.g. --set plan.gpus={model_parallel * 8}"
        )
    dp = check_shapes(config.model, config.parallel, gpus)
    e = estimate(config.model, config.parallel, train, config.plan, gpus, seq_len, config.plan_vocab_size())
    p, m = config.parallel, config.model
    table = Table(
        title=f"plan: {_count(e.params)} parameters, tp={p.tp} pp={p.pp} dp={dp} ZeRO-{p.zero_stage}, "
        f"{gpus} GPU(s), sequences of {seq_len:,}"
    )
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows = [
        ("parameters per GPU", _count(e.params_per_gpu)),
        ("weights per GPU", _bytes(e.weight_bytes)),
        ("gradients per GPU", _bytes(e.grad_bytes)),
        ("optimizer state per GPU", _bytes(e.optimizer_bytes)),
        *(
            (
                f"activations per GPU, {choice} recomputation" + (" (configured)" if choice == e.checkpointing else ""),
                _bytes(e.activation_bytes[choice]),
            )
            for choice in RECOMPUTE_COMPUTE
        ),
        ("total per GPU (none / selective / full)", " / ".join(_bytes(e.total_bytes(c)) for c in RECOMPUTE_COMPUTE)),
        ("KV cache per token per layer", f"{_bytes(e.kv_bytes_per_token_per_layer)} ({m.n_kv_heads} KV heads)"),
        (f"KV cache per sequence of {seq_len:,}", _bytes(e.kv_bytes_per_sequence)),
        ("FLOPs per token (train)", f"{e.flops_per_token:.3g}"),
        ("tokens per step", f"{e.tokens_per_step:,} ({batch:,} sequences of {seq_len:,})"),
        (f"steps for {config.plan.token_budget:.3g} tokens", f"{e.steps:,.0f}"),
        (
            f"days at MFU {config.plan.mfu:.0%}" + (", full recomputation" if e.checkpointing == "full" else ""),
            f"{e.days:,.1f}",
        ),
        ("assumed peak per GPU (plan.peak_tflops)", f"{config.plan.peak_tflops:g} TFLOP/s"),
        ("assumed memory per GPU (plan.gpu_memory_gb)", f"{config.plan.gpu_memory_gb:g} GB"),
    ]
    for row in rows:
        table.add_row(*row)
    out = console()
    out.print(table)
    if filled:
        out.print(
            f"[yellow]note:[/] planned with the {config.model.preset} preset's usual run ({', '.join(filled)}), "
            f"which the config does not set; set {' and '.join(k.split('=')[0] for k in filled)} to plan "
            f"another",
            highlight=False,
        )
    warmup = train.warmup_warning()
    if warmup:
        out.print(f"[yellow]note:[/] {warmup}", highlight=False)
    limit = config.plan.gpu_memory_gb * 1e9
    fits = [choice for choice in RECOMPUTE_COMPUTE if e.total_bytes(choice) <= limit]
    refused = not fits
    if not fits:
        out.print(
            f"[bold red]warning:[/] does not fit {config.plan.gpu_memory_gb:g} GB per GPU even with full "
            f"recomputation; raise tp/pp or the ZeRO stage, or lower train.micro_batch_size"
        )
    elif e.checkpointing not in fits:  # memory falls from none to selective to full: the first that fits
        out.print(
            f"[yellow]note:[/] fits {config.plan.gpu_memory_gb:g} GB only with {fits[0]} activation "
            f"recomputation (parallel.activation_checkpointing={fits[0]})"
        )
    if config.train.mixture is not None:
        _print_mixture(config, data, max(1, round(e.steps)), batch)
    elif data is not None:
        out.print(
            "[yellow]note:[/] --data is read only with train.mixture (the epochs of each source); without "
            "one, nothing here depends on the shards"
        )
    try:
        check_batch(train, dp)
    except LayoutError as exc:
        refused = True
        out.print(
            f"[yellow]note:[/] {exc}: training would refuse this layout; set train.global_batch_size to a "
            f"multiple of {train.micro_batch_size * dp}"
        )
    if e.days > 60:
        month_gpus = -(-gpus * e.days // 30)
        month_dp = max(1, int(month_gpus) // (p.tp * p.pp))
        out.print(
            f"[yellow]hint:[/] {e.days:,.0f} days on {gpus} GPU(s): ~{month_gpus:,.0f} GPUs would take 30 days "
            f"(set plan.gpus, or launch.nnodes x launch.nproc_per_node), with train.global_batch_size of at "
            f"least {month_dp * train.micro_batch_size:,} sequences so that every one of {month_dp:,} "
            f"data-parallel replicas has a micro-batch ({e.tokens_per_step:,} tokens per step now)"
        )
    if refused:
        out.print(f"next: change the settings named above, then crucible plan{settings} with them", highlight=False)
    else:
        out.print(
            f"next: crucible run{settings} --output RUN on this machine, or crucible submit{settings} --output "
            f"RUN on Slurm",
            highlight=False,
        )
