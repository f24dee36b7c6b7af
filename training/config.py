"""Config sections of training: the model, the parallel layout, the optimization, checkpoints,
rollback, hooks and sampling, gathered in `TrainingConfig`, all the trainer reads.

Layout errors that would otherwise surface as a hang or a shape mismatch deep inside a
collective (heads not divisible by TP, fewer layers than pipeline stages, ZeRO-2/3 with
pipeline parallelism) are rejected here, before any process group starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.ground import storage
from pipeline.ground.errors import UserError
from pipeline.ground.schema import Section
from training.mixture import MixtureConfig

TrackerName = Literal["tensorboard", "wandb", "mlflow"]
DEFAULT_LOGGERS: tuple[TrackerName, ...] = ("tensorboard",)  # train.loggers' default
STOPPED_FILE = "stopped.json"  # in the run folder when a signal stopped training early, after a checkpoint

# Shapes of well-known sizes; the 1b/7b/70b ones follow the Llama family.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"d_model": 64, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 176},
    "125m": {"d_model": 768, "n_layers": 12, "n_heads": 12, "n_kv_heads": 12, "ffn_hidden": 2048},
    "1b": {"d_model": 2048, "n_layers": 16, "n_heads": 32, "n_kv_heads": 8, "ffn_hidden": 8192},
    "7b": {"d_model": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 32, "ffn_hidden": 11008},
    "70b": {"d_model": 8192, "n_layers": 80, "n_heads": 64, "n_kv_heads": 8, "ffn_hidden": 28672},
}
# (sequence length, global batch in sequences) of published runs of each size, for `plan` where the config sets
# neither: GPT-3 Small (2,048 x 256, 0.5M tokens a step), TinyLlama 1.1B (2,048 x 1,024, 2M), Llama 2 (4,096 x 1,024,
# 4M). `tiny` has none: the config's own run is the plan.
PRESET_RUNS: dict[str, tuple[int, int]] = {
    "125m": (2048, 256),
    "1b": (2048, 1024),
    "7b": (4096, 1024),
    "70b": (4096, 1024),
}


class ModelConfig(Section):
    """A decoder-only GPT: RoPE, RMSNorm, grouped-query attention, SwiGLU."""

    preset: Literal["tiny", "125m", "1b", "7b", "70b"] | None = Field(
        "tiny", description="Fills the sizes not given explicitly."
    )
    d_model: int = Field(64, ge=2)
    n_layers: int = Field(4, ge=1)
    n_heads: int = Field(4, ge=1)
    n_kv_heads: int = Field(2, ge=1, description="Grouped-query attention: K/V heads shared by n_heads/n_kv_heads.")
    ffn_hidden: int = Field(176, ge=1, description="SwiGLU inner size.")
    vocab_size: int | None = Field(None, ge=2, description="Default: the tokenizer's, from the shard manifest.")
    vocab_multiple: int = Field(128, ge=1, description="The embedding is padded to a multiple of this (and of TP).")
    tie_embeddings: bool = True
    dropout: float = Field(0.0, ge=0, lt=1)
    rope_theta: float = Field(10000.0, gt=0)
    norm_eps: float = Field(1e-5, gt=0)
    document_masking: bool = Field(True, description="Reset positions and mask attention at document boundaries.")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, values: Any) -> Any:
        if isinstance(values, dict):
            preset = values.get("preset", "tiny")
            if preset is not None and preset not in PRESETS:
                return values  # the Literal check reports it
            return (PRESETS[preset] if preset else {}) | values
        return values

    @model_validator(mode="after")
    def _shapes(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head size {self.d_model // self.n_heads} must be even for RoPE")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class ParallelConfig(Section):
    """The 3D layout: DP = world size / (TP * PP)."""

    tp: int = Field(1, ge=1, description="Tensor-parallel size (megatron-core layers).")
    pp: int = Field(1, ge=1, description="Pipeline stages (DeepSpeed PipelineModule, 1F1B).")
    zero_stage: Literal[0, 1, 2, 3] = Field(1, description="DeepSpeed ZeRO stage; 2 and 3 need pp = 1.")
    partition_method: str = Field(
        "type:Block",
        description="PipelineModule partitioning: `type:Block` (default) gives each stage an even share of "
        "the blocks; `uniform` (layers), `parameters` or `type:REGEX` as DeepSpeed reads them.",
    )
    activation_checkpointing: Literal["none", "selective", "full"] = Field(
        "none",
        description="Recompute activations in backward: `selective` keeps the matmul and attention outputs "
        "of each block and recomputes norms, RoPE and SwiGLU's activation (little compute); "
        "`full` keeps only each block's input and reruns its forward (about 1/3 more compute). "
        "true/false mean full/none.",
    )
    attention: Literal["auto", "sdpa", "flex"] = Field(
        "auto",
        description="Kernel of document-masked attention: `flex` is FlexAttention with a block mask that "
        "skips the tiles between documents (GPU only); `sdpa` a dense mask; `auto` flex on "
        "GPU, sdpa on the CPU.",
    )
    compile: bool = Field(
        False,
        description="torch.compile each transformer block (fuses norms, RoPE and SwiGLU; "
        "the first steps are slower while it compiles).",
    )
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: NCCL on GPU, gloo on CPU.")

    @field_validator("activation_checkpointing", mode="before")
    @classmethod
    def _checkpointing_was_a_flag(cls, value: Any) -> Any:
        """It was a bool before `selective` existed; configs that say true/false keep their meaning."""
        return ("full" if value else "none") if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _zero_with_pipeline(self) -> ParallelConfig:
        if self.pp > 1 and self.zero_stage > 1:
            raise ValueError(
                f"zero_stage {self.zero_stage} with pp {self.pp}: DeepSpeed's pipeline engine supports "
                "ZeRO 0 or 1 only (it shards gradients itself); use zero_stage 1, or pp 1 for ZeRO-2/3"
            )
        if self.compile and self.zero_stage == 3:
            raise ValueError(
                "compile with zero_stage 3: ZeRO-3 gathers each layer's weights in module hooks "
                "that compiled blocks would bypass; use zero_stage 1 or 2 with compile"
            )
        return self


class TrackingConfig(Section):
    """Where the experiment trackers named in `train.loggers` write."""

    project: str = Field("crucible", min_length=1, description="W&B project and MLflow experiment.")
    wandb_mode: Literal["offline", "online", "disabled"] = Field(
        "offline",
        description="W&B without a network by default (`wandb sync` uploads later); WANDB_MODE, when set, wins.",
    )
    mlflow_uri: str | None = Field(
        None, description="MLflow tracking URI: a server (http://...), a folder (file:...); default RUN/mlruns."
    )


class ShardCacheConfig(Section):
    """Where shards read from object storage (`--data s3://...`) are kept on this machine."""

    folder: Path | None = Field(
        None,
        description="Cache folder, shared by runs and ranks (files are named by "
        "hash); default ~/.cache/crucible/shards.",
    )
    max_gb: float = Field(
        50.0,
        gt=0,
        description="Past this size the least recently used shards are evicted; "
        "training is fastest when the whole split fits.",
    )
    download_threads: int = Field(8, ge=1, description="Shards downloaded at once, ahead of the loader.")


class TrainConfig(Section):
    """Steps, batch, optimizer, schedule, precision and logging."""

    max_steps: int = Field(100, ge=1)
    seq_len: int | None = Field(None, ge=8, description="Expected shard seq_len; default: whatever the shards hold.")
    seed: int = 1234
    global_batch_size: int = Field(8, ge=1, description="Sequences per optimizer step, over all DP ranks.")
    micro_batch_size: int = Field(4, ge=1, description="Sequences per rank per forward pass.")
    lr: float = Field(3e-3, gt=0)
    min_lr: float = Field(3e-4, ge=0, description="Floor of the cosine decay.")
    warmup_steps: int = Field(10, ge=0)
    decay_steps: int | None = Field(None, ge=1, description="Cosine length; default max_steps.")
    weight_decay: float = Field(0.1, ge=0)
    no_decay_embeddings: bool = Field(True, description="No weight decay on embeddings (never on norms/biases).")
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp8"] = Field(
        "auto",
        description="auto: bf16 on GPU, fp32 on CPU. fp8: bf16 with the blocks' matmuls in FP8 (torchao, the "
        "`gpu` extra; GPUs of compute capability 8.9+, with parallel.compile); the embedding, "
        "norms and output head stay bf16.",
    )
    fp8_scaling: Literal["tensorwise", "rowwise"] = Field(
        "tensorwise",
        description="FP8 scale granularity: one per tensor (fastest) or one per row (closer to bf16; "
        "compute capability 9.0+).",
    )
    log_interval: int = Field(1, ge=1)
    loggers: list[TrackerName] = Field(
        default_factory=lambda: list(DEFAULT_LOGGERS),
        description="Experiment trackers fed the metrics, config, prep stats and events (metrics.jsonl and "
        "events.jsonl are always written); wandb and mlflow need the `trackers` extra.",
    )
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    eval_interval: int = Field(50, ge=1)
    eval_batches: int = Field(
        2,
        ge=0,
        description="Validation global batches per evaluation; 0 trains "
        "without validation (no val_loss, and an empty validation split is fine).",
    )
    peak_tflops: float | None = Field(
        None, gt=0, description="Per-device peak for MFU; default measured on a GPU, none on a CPU (tokens/s only)."
    )
    data_seed: int = Field(0, description="Seeds the loader's epoch order.")
    mixture: MixtureConfig | None = Field(
        None,
        description="Token fractions of the shards' named sources, phases "
        "by step, a repetition cap; none: every row alike.",
    )
    shard_cache: ShardCacheConfig = Field(default_factory=ShardCacheConfig)

    @model_validator(mode="after")
    def _batch(self) -> TrainConfig:
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not a multiple of "
                f"micro_batch_size {self.micro_batch_size}"
            )
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} exceeds lr {self.lr}")
        return self

    def warmup_warning(self) -> str | None:
        """A warmup longer than the run never reaches `lr`. Said, not refused: short smoke and test runs keep the
        default warmup on purpose."""
        if self.warmup_steps <= self.max_steps:
            return None
        return (
            f"train.warmup_steps {self.warmup_steps} is longer than the run (train.max_steps {self.max_steps}): "
            f"the learning rate never reaches train.lr {self.lr:g}; lower train.warmup_steps or raise "
            f"train.max_steps"
        )


class CheckpointConfig(Section):
    """When to save and what to keep."""

    enabled: bool = Field(True, description="False: never save (benchmarks); a signal still stops the run.")
    interval: int = Field(50, ge=0, description="Save every N steps (0: only at the end and on signals).")
    keep_last: int = Field(3, ge=1, description="Keep the newest K checkpoints...")
    keep_every: int | None = Field(None, ge=1, description="...and every one whose step is a multiple of M, forever.")
    verify: bool = Field(True, description="Check every file's SHA-256 before loading.")
    remote: str | None = Field(
        None,
        description="Also upload each checkpoint here (s3://bucket/prefix), in the "
        "background; `--resume auto` on a machine without them takes the "
        "newest complete one from there. keep_last/keep_every apply there too.",
    )

    @field_validator("remote")
    @classmethod
    def _a_url(cls, value: str | None) -> str | None:
        if value is not None and not storage.is_remote(value):
            raise ValueError(f"expected an object-storage URL such as s3://bucket/prefix, got {value!r}")
        return value


class HookSpec(Section):
    """A user hook: `target` is "module.path:ClassName", `args` its keyword arguments."""

    target: str = Field(pattern=r"^[\w.]+:\w+$")
    args: dict[str, Any] = Field(default_factory=dict)


class RollbackConfig(Section):
    """When a step counts as an anomaly and what to do about it."""

    enabled: bool = True
    window: int = Field(50, ge=3, description="Steps in the moving window of loss and grad-norm statistics.")
    min_history: int = Field(20, ge=2, description="Steps seen before spikes are judged (NaNs always are).")
    loss_zscore: float = Field(6.0, gt=0, description="A loss this many noise std above the recent level is a spike.")
    grad_norm_zscore: float | None = Field(10.0, gt=0, description="Same for the gradient norm; null disables.")
    min_loss_jump: float = Field(0.5, ge=0, description="...and at least this far above the mean (absolute).")
    lr_scale: float = Field(0.5, gt=0, le=1, description="Learning-rate factor for a while after a rollback.")
    lr_scale_steps: int = Field(20, ge=0)
    max_rollbacks: int = Field(3, ge=0, description="Give up with an error after this many.")


class PlanConfig(Section):
    """What `plan` assumes about the cluster and the run."""

    gpus: int | None = Field(
        None,
        ge=1,
        description="GPUs in the run; DP = gpus / (tp * pp). Default: launch.nproc_per_node x launch.nnodes.",
    )
    gpu_memory_gb: float = Field(80.0, gt=0, description="Memory per GPU, for the fits/does-not-fit warning.")
    peak_tflops: float = Field(989.0, gt=0, description="Per-GPU dense bf16 peak (H100 SXM: 989).")
    mfu: float = Field(0.4, gt=0, le=1, description="Model FLOPs utilization assumed for the time estimate.")
    token_budget: float = Field(1e12, gt=0, description="Training tokens.")
    seq_len: int | None = Field(None, ge=1, description="Default: train.seq_len, else prep.pack.seq_len.")
    vocab_size: int | None = Field(
        None, ge=2, description="Default: model.vocab_size, else the tokenizer's prep.tokenizer.vocab_size."
    )
    bf16: bool = True


class SamplesConfig(Section):
    """Sampling settings, the one set of defaults: the samples at the end of `run`, `generate`
    (whose flags override them) and the generation config of a Hugging Face export."""

    prompts: list[str] = Field(default_factory=lambda: ["The ", "Debian is", "def main("])
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(0.8, ge=0, description="0 picks the most likely token (greedy).")
    top_k: int | None = Field(50, ge=1)
    top_p: float | None = Field(0.95, gt=0, le=1)
    seed: int = Field(
        0,
        description="Sampling seed; each prompt draws with its own, derived from this and its "
        "place in the list (the same text on every rerun).",
    )


class EvalConfig(Section):
    """Task suites scored in the training loop; `eval` scores the same files on a checkpoint."""

    tasks: list[Path] = Field(
        default_factory=list,
        description=(
            "Task files, JSONL or Parquet, one item a line: multiple choice {context, choices, gold} (acc, acc_norm, "
            "chance) or cloze {context, target} (acc, perplexity per word and per token); a task's name is its file's "
            "stem."
        ),
    )
    interval: int | None = Field(
        None, ge=1, description="Score them every N steps and at the last; default train.eval_interval."
    )
    max_items: int | None = Field(None, ge=1, description="Score only the first N items of each task.")


class TrainingConfig(Section):
    """The sections training reads; the root config extends it, so their keys stay top-level."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    rollback: RollbackConfig = Field(default_factory=RollbackConfig)
    hooks: list[HookSpec] = Field(default_factory=list, description="User hooks called by the training loop.")
    samples: SamplesConfig = Field(default_factory=SamplesConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)


class LayoutError(UserError):
    """A parallel layout that cannot run; raised before process groups start."""


def check_shapes(model: ModelConfig, parallel: ParallelConfig, world_size: int) -> int:
    """Whether the model splits over TP and PP and the processes over TP x PP; returns the DP size."""
    tp, pp = parallel.tp, parallel.pp
    if world_size % (tp * pp):
        raise LayoutError(f"world size {world_size} is not a multiple of tp*pp = {tp}*{pp}; launch tp*pp*dp processes")
    if model.n_heads % tp or model.n_kv_heads % tp:
        raise LayoutError(f"n_heads {model.n_heads} and n_kv_heads {model.n_kv_heads} must be divisible by tp {tp}")
    if model.ffn_hidden % tp:
        raise LayoutError(f"ffn_hidden {model.ffn_hidden} is not divisible by tp {tp}")
    if model.n_layers < pp:
        raise LayoutError(f"n_layers {model.n_layers} is fewer than pipeline stages pp {pp}")
    return world_size // (tp * pp)


def check_batch(train: TrainConfig, dp: int) -> None:
    """Whether a global batch splits into whole micro-batches on every data-parallel rank."""
    if train.global_batch_size % (train.micro_batch_size * dp):
        raise LayoutError(
            f"global_batch_size {train.global_batch_size} is not divisible by "
            f"micro_batch_size {train.micro_batch_size} x dp {dp}"
        )


def check_layout(model: ModelConfig, parallel: ParallelConfig, train: TrainConfig, world_size: int) -> int:
    """Validate the layout against the world size and return the data-parallel size."""
    dp = check_shapes(model, parallel, world_size)
    check_batch(train, dp)
    return dp
