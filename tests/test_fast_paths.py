"""The GPU speed paths give the numbers of the plain ones: FlexAttention's document block mask,
selective and full recomputation, FP8 (emulated); positions follow `model.document_masking`;
what cannot run on this machine is refused with a message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.attention.flex_attention as flex_module
from torch.nn.attention.flex_attention import create_block_mask

from pipeline.config import ConfigError, load_config
from pipeline.ground.errors import UserError
from tests.conftest import read_set, write_jsonl, crucible_in_process
from training.data import DistributedLoader, PackedDataset
from training.fp8 import check_fp8
from training.generate import single_process_groups
from training.init import init_weights
from training.model import (
    GPT,
    Attention,
    Block,
    _compiled_flex,
    attention_kernel,
    attention_mask,
    document_block_mask,
    lm_loss,
)
from training.parallel import tp_config_single
from training.sizing import estimate, padded_vocab

STEPS = 20


@pytest.fixture(autouse=True)
def one_thread():
    """The models here are tiny: one thread beats several contending for a busy machine's cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Packed rows of 64 tokens holding one to four documents: paragraphs of English text."""
    from pipeline.prep import run_prep

    paragraphs = [
        {"id": f"{r['id']}-{i}", "text": text.strip()[:300]}
        for r in read_set("english", 150)
        for i, text in enumerate(r["text"].split("\n\n"))
        if len(text.strip()) > 40
    ]
    folder = tmp_path_factory.mktemp("short_documents")
    config = load_config(
        None,
        [
            "prep.stages=[normalize, tokenize, pack]",
            "prep.tokenizer.vocab_size=512",
            "prep.pack.seq_len=64",
            "prep.pack.val_fraction=0.1",
        ],
    )
    config.prep.inputs = [write_jsonl(folder / "paragraphs.jsonl", paragraphs[:1500])]
    run_prep(config.prep, folder / "prep", show_progress=False)
    return folder / "prep" / "shards"


def train(
    shards: Path, steps: int, overrides: tuple[str, ...] = (), setup=None
) -> tuple[list[float], list[torch.Tensor]]:
    """Losses and flattened gradients of `steps` AdamW steps of the tiny GPT on the shards' rows."""
    single_process_groups()
    cfg = load_config(None, list(overrides)).model
    dataset = PackedDataset(shards, "train")
    model = GPT(cfg, tp_config_single(), padded_vocab(dataset.manifest.tokenizer.vocab_size, 128, 1))
    init_weights(model, seed=7, n_layers=cfg.n_layers)
    if setup is not None:
        setup(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loader = DistributedLoader(dataset, 4, seed=0, document_positions=cfg.document_masking)
    losses, grads = [], []
    for _ in range(steps):
        batch = loader.next_batch()
        loss = lm_loss(model(batch.inputs, batch.positions, batch.segments), batch.targets, dataset.pad_id)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        optimizer.step()
        optimizer.zero_grad()
    return losses, grads


def use_kernel(kernel: str):
    def setup(model: GPT) -> None:
        for module in model.modules():
            if isinstance(module, Attention):
                module.kernel = kernel

    return setup


def dense_tiles(num: torch.Tensor, indices: torch.Tensor, tiles: int) -> torch.Tensor:
    """[B, H, q tiles, kv tiles] True at the first `num` indices of each row."""
    keep = torch.arange(indices.shape[-1]) < num[..., None]
    out = torch.zeros(*indices.shape[:-1], tiles + 1, dtype=torch.bool)  # the last column takes the unused
    return out.scatter(-1, indices.long().masked_fill(~keep, tiles), True)[..., :tiles]


@pytest.mark.parametrize("seq", [64, 128])
def test_document_block_mask_is_the_block_mask_of_the_dense_one(seq: int) -> None:
    rng = np.random.default_rng(seq)
    starts = rng.random((4, seq)) < [[0.0], [0.02], [0.08], [0.3]]  # one document .. many short ones
    starts[:, 0] = True
    segments = torch.from_numpy(np.cumsum(starts, axis=1))

    def same_document(b, h, q, kv):
        return (kv <= q) & (segments[b, q] == segments[b, kv])

    ours = document_block_mask(segments, block=16)
    reference = create_block_mask(same_document, 4, 1, seq, seq, device="cpu", BLOCK_SIZE=16)
    tiles = seq // 16
    for num, idx in [("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices")]:
        got = dense_tiles(getattr(ours, num), getattr(ours, idx), tiles)
        want = dense_tiles(getattr(reference, num), getattr(reference, idx), tiles)
        assert torch.equal(got, want), num
    assert ours.full_kv_num_blocks.sum() > 0 and (ours.kv_num_blocks < torch.arange(1, tiles + 1)).any(), (
        "the layouts must give full and skipped tiles"
    )


def test_compiled_flex_kernel_matches_sdpa_with_fresh_masks_and_no_recompile() -> None:
    """The compiled FlexAttention kernel (forward; on the CPU too) skips the empty tiles and runs full
    ones unmasked, so this checks the block mask in a real kernel; a new mask per batch must not
    recompile it."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, heads, 512, 16, generator=generator) for heads in (4, 2, 2))
    for rate in (0.0, 0.004, 0.03):
        starts = torch.rand(2, 512, generator=generator) < rate
        starts[:, 0] = True
        segments = torch.cumsum(starts, dim=1)
        block_mask = document_block_mask(segments)
        with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
            got = _compiled_flex()(q, k, v, block_mask=block_mask, enable_gqa=True)
        want = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=attention_mask(segments), enable_gqa=True
        )
        assert torch.allclose(got, want, atol=1e-5), (rate, (got - want).abs().max())


def test_a_compiled_block_runs_flex_attention_in_its_graph() -> None:
    """With parallel.compile the block mask and FlexAttention are traced into the block's graph."""
    single_process_groups()
    cfg = load_config(None, []).model
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 256, cfg.d_model, generator=generator)
    starts = torch.rand(2, 256, generator=generator) < 0.01
    starts[:, 0] = True
    inputs = (x, torch.arange(256).expand(2, 256), torch.cumsum(starts, dim=1))
    sdpa = Block(cfg, tp_config_single(), 0)
    for param in sdpa.parameters():
        param.data.normal_(0.0, 0.1, generator=generator)
    compiled = Block(cfg, tp_config_single(), 0)
    compiled.load_state_dict(sdpa.state_dict())
    compiled.attn.kernel = "flex"
    compiled.compile(fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(inputs)[0], sdpa(inputs)[0], atol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_attention_trains_as_the_sdpa_mask(shards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """20 steps: FlexAttention with the document block mask against SDPA with the dense mask, the
    losses within 1e-4 and every gradient within 1e-4 (absolute, plus 1e-4 of its size).

    On the CPU FlexAttention runs its eager reference, whose backward torch refuses there by a device
    check that this test lifts (the compiled kernel has no CPU backward); the mask function and the
    plumbing are the GPU kernel's, and the block mask is checked against torch's own above."""
    monkeypatch.setattr(flex_module, "_validate_device", lambda *tensors: None)
    segments = DistributedLoader(PackedDataset(shards, "train"), 64, seed=0).next_batch().segments
    assert (segments[:, -1] > 1).sum() >= 32, "rows with several documents are needed to test the mask"
    sdpa_losses, sdpa_grads = train(shards, STEPS, setup=use_kernel("sdpa"))
    flex_losses, flex_grads = train(shards, STEPS, setup=use_kernel("flex"))
    assert np.allclose(flex_losses, sdpa_losses, rtol=0, atol=1e-4), (flex_losses, sdpa_losses)
    for step, (ours, theirs) in enumerate(zip(flex_grads, sdpa_grads, strict=True)):
        assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4), f"step {step}: {(ours - theirs).abs().max()}"
    causal_losses, _ = train(shards, 1, ("model.document_masking=false",))
    assert abs(causal_losses[0] - sdpa_losses[0]) > 1e-4, "the document mask changes the loss"


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_recomputation_gives_the_same_losses_and_gradients(shards: Path, mode: str) -> None:
    def recompute(model: GPT) -> None:
        for block in model.blocks:
            block.checkpointing = mode

    plain_losses, plain_grads = train(shards, 5)
    losses, grads = train(shards, 5, setup=recompute)
    assert losses == plain_losses
    assert all(torch.equal(a, b) for a, b in zip(grads, plain_grads, strict=True))


@pytest.mark.slow  # twenty seconds of compiling; test_a_compiled_block_runs_flex_attention_in_its_graph stays fast
def test_compiled_blocks_recompute_inside_their_graph() -> None:
    """`parallel.compile` compiles each block with its checkpoint inside (the form torch.compile
    supports for selective recomputation); gradients match the eager block without recomputation."""
    single_process_groups()
    cfg = load_config(None, []).model
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, cfg.d_model, generator=generator)
    positions, segments = torch.arange(64).expand(2, 64), torch.ones(2, 64, dtype=torch.long)

    def gradients(block: Block) -> list[torch.Tensor]:
        inputs = x.clone().requires_grad_()
        block((inputs, positions, segments))[0].square().mean().backward()
        return [inputs.grad, *(p.grad for p in block.parameters())]

    eager = Block(cfg, tp_config_single(), 0)
    for param in eager.parameters():
        param.data.normal_(0.0, 0.1, generator=generator)
    want = gradients(eager)
    for mode in ("selective", "full"):
        block = Block(cfg, tp_config_single(), 0)
        block.load_state_dict(eager.state_dict())
        block.checkpointing = mode
        block.compile()
        for got, expected in zip(gradients(block), want, strict=True):
            assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6), mode


def test_activation_checkpointing_choices_and_the_old_flag() -> None:
    assert load_config(None, ["parallel.activation_checkpointing=true"]).parallel.activation_checkpointing == "full"
    assert load_config(None, ["parallel.activation_checkpointing=false"]).parallel.activation_checkpointing == "none"
    assert (
        load_config(None, ["parallel.activation_checkpointing=selective"]).parallel.activation_checkpointing
        == "selective"
    )
    with pytest.raises(ConfigError, match="'none', 'selective' or 'full'"):
        load_config(None, ["parallel.activation_checkpointing=some"])


@pytest.mark.parametrize("masking", [True, False])
def test_positions_restart_at_documents_only_with_document_masking(shards: Path, masking: bool) -> None:
    batch = DistributedLoader(PackedDataset(shards, "train"), 64, seed=0, document_positions=masking).next_batch()
    assert (batch.segments[:, -1] > 1).any()
    seq = batch.inputs.shape[1]
    if masking:
        first = torch.ones_like(batch.segments, dtype=torch.bool)
        first[:, 1:] = batch.segments[:, 1:] != batch.segments[:, :-1]
        assert torch.equal(batch.positions == 0, first)
        assert torch.equal(batch.positions[:, 1:][~first[:, 1:]], (batch.positions[:, :-1] + 1)[~first[:, 1:]])
    else:
        assert torch.equal(batch.positions, torch.arange(seq).expand_as(batch.positions))


def test_the_cpu_refuses_flex_attention_and_fp8_with_a_message() -> None:
    config = load_config(None, ["parallel.compile=true", "train.precision=fp8"])
    cpu = torch.device("cpu")
    assert attention_kernel("auto", config.model, cpu) == "sdpa"
    with pytest.raises(UserError, match="FlexAttention has no backward pass on the CPU"):
        attention_kernel("flex", config.model, cpu)
    with pytest.raises(UserError, match="needs an NVIDIA GPU of compute capability 8.9"):
        check_fp8(config.model, config.parallel, "tensorwise", cpu)
    eager = load_config(None, ["train.precision=fp8"])
    with pytest.raises(UserError, match="fp8 without parallel.compile"):
        check_fp8(eager.model, eager.parallel, "tensorwise", cpu)


def test_train_refuses_fp8_on_the_cpu_before_training(shards: Path, tmp_path: Path) -> None:
    result = crucible_in_process(
        "train",
        "--data",
        str(shards),
        "--output",
        str(tmp_path),
        "--set",
        "train.precision=fp8",
        "--set",
        "parallel.compile=true",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "train.precision=fp8 needs an NVIDIA GPU" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("scaling", ["tensorwise", "rowwise"])
def test_fp8_matmuls_track_full_precision(shards: Path, scaling: str) -> None:
    """torchao's float8 matmuls, emulated in fp32 on the CPU, on the blocks' layers only."""
    pytest.importorskip("torchao")
    from training.fp8 import enable_fp8

    converted = []

    def fp8(model: GPT) -> None:
        converted.append(enable_fp8(model, scaling, emulate=True))
        assert model.head.proj.matmul is None, "the output head stays in full precision"

    untied = ("model.tie_embeddings=false",)
    plain, _ = train(shards, 5, untied)
    losses, _ = train(shards, 5, untied, setup=fp8)
    assert converted == [7 * 4]  # q, k, v, o, gate, up, down in each of the 4 blocks
    assert losses != plain, "the float8 casts must be in the path"
    assert np.allclose(losses, plain, rtol=0.02), (losses, plain)


def test_plan_counts_activations_and_time_for_each_recomputation_choice() -> None:
    def plan(choice: str):
        config = load_config(
            None,
            [
                "model.preset=1b",
                "plan.seq_len=2048",
                "train.micro_batch_size=4",
                f"parallel.activation_checkpointing={choice}",
            ],
        )
        return estimate(
            config.model,
            config.parallel,
            config.train,
            config.plan,
            config.plan_gpus(),
            config.plan_seq_len(),
            config.plan_vocab_size(),
        )

    none, selective, full = plan("none"), plan("selective"), plan("full")
    acts = none.activation_bytes
    assert acts == full.activation_bytes and none.checkpointing == "none" and full.checkpointing == "full"
    assert acts["full"] == 2 * 2048 * 2048 * 4 * 16  # bf16 block inputs: 2 bytes x d_model x tokens x layers
    assert acts["full"] < acts["selective"] < acts["none"] / 2
    assert selective.days == none.days and full.days == pytest.approx(none.days * 4 / 3)
    assert none.total_bytes("none") - none.total_bytes("selective") == acts["none"] - acts["selective"]
