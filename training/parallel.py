"""All of the parallel plumbing in one place: process groups, RNG, and the DeepSpeed engine.

megatron-core owns the tensor-parallel groups its layers use; DeepSpeed owns pipeline and data
parallelism. Both lay ranks out the same way (TP fastest, then DP, then PP) and this module
asserts that they agree before any training starts. The model code never sees any of this.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

import training.accelerator  # noqa: F401  (before deepspeed and megatron-core)

# isort: split
import deepspeed  # noqa: E402
import torch.distributed as dist  # noqa: E402
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec  # noqa: E402
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology  # noqa: E402
from megatron.core import parallel_state  # noqa: E402
from megatron.core.model_parallel_config import ModelParallelConfig  # noqa: E402

from pipeline.ground.quiet import muted_output
from training.config import LayoutError, ModelConfig, ParallelConfig, TrainConfig  # noqa: E402
from training.fp8 import enable_fp8  # noqa: E402
from training.model import (  # noqa: E402
    EMBEDDING,
    GPT,
    Attention,
    Block,
    Embedding,
    FinalNorm,
    Head,
    attention_kernel,
    lm_loss,
)


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int
    rank: int
    world: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    device: torch.device


def init_distributed(parallel: ParallelConfig) -> Layout:
    """Start the process group (from torchrun's environment; in memory for a single process) and the
    megatron-core groups."""
    use_cuda = torch.cuda.is_available()
    backend = ("nccl" if use_cuda else "gloo") if parallel.backend == "auto" else parallel.backend
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("LOCAL_RANK", "0")
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            _init_from_agent_store(backend)
        elif int(os.environ["WORLD_SIZE"]) == 1:
            # One process needs no rendezvous: a port (29500 by default) would clash with any other
            # single-process run on this machine.
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        with muted_output():  # DeepSpeed's "... comm op built successfully", once per rank
            deepspeed.init_distributed(dist_backend=backend, verbose=False)
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tp, pipeline_model_parallel_size=parallel.pp
    )
    world = dist.get_world_size()
    layout = Layout(
        tp=parallel.tp,
        pp=parallel.pp,
        dp=world // (parallel.tp * parallel.pp),
        rank=dist.get_rank(),
        world=world,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        device=torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu"),
    )
    coord = topology(layout).get_coord(layout.rank)
    if (coord.pipe, coord.data, coord.model) != (layout.pp_rank, layout.dp_rank, layout.tp_rank):
        raise RuntimeError(
            f"rank {layout.rank}: DeepSpeed places it at {coord}, megatron-core at "
            f"pipe={layout.pp_rank} data={layout.dp_rank} model={layout.tp_rank}"
        )
    return layout


def shutdown_distributed() -> None:
    """Tear the megatron-core groups and the process group down while the interpreter is whole.

    Left to interpreter exit, gloo's worker threads can outlive it and abort the rank ("terminate
    called without an active exception"), which torchrun then reports as a failed run.
    """
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def _init_from_agent_store(backend: str) -> None:
    """Join torchrun's store under a prefix of this restart attempt.

    After torchrun restarts failed workers, the rendezvous store still holds the addresses the
    previous attempt's ranks published; without a fresh namespace a new rank can read a dead
    peer's address and time out connecting to it.
    """
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group(
        backend,
        store=dist.PrefixStore(f"crucible/attempt_{attempt}", store),
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
    )


def topology(layout: Layout) -> PipeModelDataParallelTopology:
    return PipeModelDataParallelTopology(num_pp=layout.pp, num_mp=layout.tp, num_dp=layout.dp)


class MegatronGroups:
    """The group queries DeepSpeed's engine asks of an `mpu`, answered by megatron-core."""

    get_model_parallel_rank = staticmethod(parallel_state.get_tensor_model_parallel_rank)
    get_model_parallel_world_size = staticmethod(parallel_state.get_tensor_model_parallel_world_size)
    get_model_parallel_group = staticmethod(parallel_state.get_tensor_model_parallel_group)
    get_tensor_model_parallel_rank = staticmethod(parallel_state.get_tensor_model_parallel_rank)
    get_tensor_model_parallel_world_size = staticmethod(parallel_state.get_tensor_model_parallel_world_size)
    get_tensor_model_parallel_group = staticmethod(parallel_state.get_tensor_model_parallel_group)
    get_data_parallel_rank = staticmethod(parallel_state.get_data_parallel_rank)
    get_data_parallel_world_size = staticmethod(parallel_state.get_data_parallel_world_size)
    get_data_parallel_group = staticmethod(parallel_state.get_data_parallel_group)


class TensorParallelRng:
    """Dropout RNG for tensor-parallel regions: distinct per TP rank, restored around each use.

    Replicated activations (the residual stream) use the default generator, seeded alike on
    every TP rank; sharded ones (attention heads) must differ per rank. On GPU megatron-core's
    CUDA tracker does this; on CPU this class keeps a second CPU generator state.
    """

    def __init__(self, seed: int, tp_rank: int) -> None:
        saved = torch.get_rng_state()
        torch.manual_seed(seed + 2718 + tp_rank)
        self.state = torch.get_rng_state()
        torch.set_rng_state(saved)

    @contextlib.contextmanager
    def fork(self) -> Iterator[None]:
        saved = torch.get_rng_state()
        torch.set_rng_state(self.state)
        try:
            yield
        finally:
            self.state = torch.get_rng_state()
            torch.set_rng_state(saved)


def seed_everything(seed: int, layout: Layout, model: torch.nn.Module) -> None:
    """Same default seed on the TP ranks of a stage, so dropout on the replicated residual
    stream agrees; attention dropout over sharded heads draws from a per-TP-rank stream."""
    stage_seed = seed + 100 * layout.pp_rank
    torch.manual_seed(stage_seed)
    if layout.device.type == "cuda":
        from megatron.core.tensor_parallel import get_cuda_rng_tracker, model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(stage_seed)
        fork = get_cuda_rng_tracker().fork
    else:
        fork = TensorParallelRng(stage_seed, layout.tp_rank).fork
    for module in model.modules():
        if isinstance(module, Attention):
            module.sharded_rng = fork


def tp_config(parallel: ParallelConfig, dtype: torch.dtype) -> ModelParallelConfig:
    # Only the tensor-parallel layers read this; pipeline stages are DeepSpeed's, not megatron's.
    # perform_initialization makes megatron tag each sharded weight (partition_dim, ...), which the
    # seeded init and DeepSpeed's grad norm need; the init_method it calls is a no-op. Weights are
    # made on the CPU on every device: `training.init` draws them there from the seed anyway, and
    # megatron's GPU path would need its CUDA RNG tracker seeded before the model exists.
    return ModelParallelConfig(
        tensor_model_parallel_size=parallel.tp,
        use_cpu_initialization=True,
        perform_initialization=True,
        params_dtype=dtype,
    )


def tp_config_single() -> ModelParallelConfig:
    """The layer config of a single-process model (inference, export checks)."""
    return tp_config(ParallelConfig(), torch.float32)


def _head_forward(embedding: Embedding, inputs: Any) -> torch.Tensor:
    return embedding.logits(inputs)


def build_pipeline(
    cfg: ModelConfig, parallel: ParallelConfig, layout: Layout, mp_config: ModelParallelConfig, vocab: int, pad_id: int
) -> PipelineModule:
    """The GPT as PipelineModule layers, in model order (which `model.canonical_name` relies on);
    with tied weights the head shares the embedding. Labels are (targets, loss denominator)."""
    if cfg.tie_embeddings:
        first = TiedLayerSpec(EMBEDDING, Embedding, cfg, mp_config, vocab, tied_weight_attr="weight")
        last = TiedLayerSpec(
            EMBEDDING, Embedding, cfg, mp_config, vocab, forward_fn=_head_forward, tied_weight_attr="weight"
        )
    else:
        first, last = LayerSpec(Embedding, cfg, mp_config, vocab), LayerSpec(Head, cfg, mp_config, vocab)
    layers = [
        first,
        *[LayerSpec(Block, cfg, mp_config, i) for i in range(cfg.n_layers)],
        LayerSpec(FinalNorm, cfg),
        last,
    ]
    with muted_output():  # DeepSpeed prints its topology and layer table
        return PipelineModule(
            layers=layers,
            topology=topology(layout),
            loss_fn=lambda logits, labels: lm_loss(logits, labels[0], pad_id, labels[1]),
            partition_method=parallel.partition_method,
        )


def build_model(
    cfg: ModelConfig,
    parallel: ParallelConfig,
    layout: Layout,
    vocab: int,
    pad_id: int,
    dtype: torch.dtype,
    fp8_scaling: str | None = None,
) -> torch.nn.Module:
    """The model of this rank; `fp8_scaling` (tensorwise / rowwise) puts the blocks' matmuls in FP8."""
    mp_config = tp_config(parallel, dtype)
    if parallel.pp > 1:
        model = build_pipeline(cfg, parallel, layout, mp_config, vocab, pad_id)
    else:
        model = GPT(cfg, mp_config, vocab)
    kernel = attention_kernel(parallel.attention, cfg, layout.device)
    for module in model.modules():
        if isinstance(module, Attention):
            module.kernel = kernel
        if isinstance(module, Block):  # each block recomputes itself, whether in a pipeline or not
            module.checkpointing = parallel.activation_checkpointing
    if fp8_scaling is not None:
        enable_fp8(model, fp8_scaling)
    if parallel.compile:  # in place, so parameter names (and checkpoints) stay those of the eager model
        for module in model.modules():
            if isinstance(module, Block):
                module.compile()
    return model


def deepspeed_config(
    train: TrainConfig, parallel: ParallelConfig, layout: Layout, bf16: bool, load_universal: bool = False
) -> dict[str, Any]:
    gas = train.global_batch_size // (train.micro_batch_size * layout.dp)
    return {
        "train_batch_size": train.global_batch_size,
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": gas,
        "gradient_clipping": train.grad_clip or 0.0,
        "zero_optimization": {"stage": parallel.zero_stage},
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "checkpoint": {"load_universal": load_universal},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def check_stage_groups(optimizer: torch.optim.Optimizer, parallel: ParallelConfig, layout: Layout) -> None:
    """Refuse pipeline stages whose optimizers hold different parameter groups (a stage of norms and the
    embedding has no matrices to decay): ZeRO reduces the gradient norm once per group over the stages, so
    such stages would wait on each other forever at the first step."""
    groups = tuple(group["weight_decay"] for group in optimizer.param_groups)
    stages: list[tuple[int, tuple[float, ...]]] = [(0, ())] * layout.world
    dist.all_gather_object(stages, (layout.pp_rank, groups))
    if len({held for _, held in stages}) > 1:
        short = sorted({stage for stage, held in stages if len(held) < max(len(h) for _, h in stages)})
        raise LayoutError(
            f"pipeline stage(s) {short} of {layout.pp} hold no weight matrices with "
            f"parallel.partition_method={parallel.partition_method!r} (only the embedding and norms), "
            f"which DeepSpeed cannot step with the others: use parallel.partition_method=type:Block, "
            f"fewer stages or more layers"
        )


def build_engine(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    ds_config: dict[str, Any],
    parallel: ParallelConfig,
) -> Any:
    with muted_output():
        engine, _, _, _ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=ds_config,
            mpu=None if parallel.pp > 1 else MegatronGroups(),
        )
    return engine
