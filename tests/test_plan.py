"""`plan` reproduces the worked examples of memory and compute arithmetic it is built on."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.config import load_config
from tests.conftest import REPO, crucible_in_process
from training.sizing import count_params, estimate


def plan(*overrides: str):
    config = load_config(None, list(overrides))
    return estimate(
        config.model,
        config.parallel,
        config.train,
        config.plan,
        config.plan_gpus(),
        config.plan_seq_len(),
        config.plan_vocab_size(),
    )


def test_kv_cache_is_16_kb_per_token_per_layer_for_d4096_32_heads() -> None:
    e = plan("model.preset=7b", "model.n_kv_heads=32", "plan.bf16=true", "plan.seq_len=4096")
    assert e.kv_bytes_per_token_per_layer == 16_384
    assert e.kv_bytes_per_sequence == 16_384 * 32 * 4096


def test_kv_cache_of_the_70b_example_at_8k_is_about_20_gb() -> None:
    e = plan("model.preset=70b", "model.n_kv_heads=64", "plan.seq_len=8192")
    assert e.kv_bytes_per_token_per_layer == 32_768
    assert 20e9 < e.kv_bytes_per_sequence < 22e9
    assert plan("model.preset=70b", "plan.seq_len=8192").kv_bytes_per_sequence * 8 == e.kv_bytes_per_sequence, "GQA"


def test_70b_weights_are_about_140_gb_in_bf16() -> None:
    e = plan("model.preset=70b", "plan.gpus=1", "parallel.zero_stage=0")
    assert 65e9 < e.params < 72e9
    assert e.weight_bytes == pytest.approx(140e9, rel=0.05)


def test_steps_for_1_4t_tokens_at_16_8m_tokens_per_step() -> None:
    e = plan(
        "train.global_batch_size=4096", "train.micro_batch_size=1", "plan.seq_len=4096", "plan.token_budget=1.4e12"
    )
    assert e.tokens_per_step == 4096 * 4096
    assert e.steps == pytest.approx(83_000, rel=0.01)


def test_zero_stages_shard_what_they_should() -> None:
    base = ["model.preset=1b", "plan.gpus=8"]
    z0, z1, z2, z3 = (plan(*base, f"parallel.zero_stage={z}") for z in range(4))
    assert z1.optimizer_bytes == pytest.approx(z0.optimizer_bytes / 8) and z1.grad_bytes == z0.grad_bytes
    assert z2.grad_bytes == pytest.approx(z0.grad_bytes / 8) and z2.weight_bytes == z0.weight_bytes
    assert z3.weight_bytes == pytest.approx(z0.weight_bytes / 8)
    tp = plan(*base, "parallel.tp=2")
    assert tp.params_per_gpu == pytest.approx(z0.params_per_gpu / 2)
    acts = plan(*base).activation_bytes
    assert acts["full"] < acts["selective"] < acts["none"]


def test_param_count_matches_the_built_model(tiny_shards) -> None:
    import torch

    from training.generate import single_process_groups
    from training.model import GPT
    from training.parallel import tp_config_single

    single_process_groups()
    cfg = load_config(None, ["model.tie_embeddings=false"]).model
    model = GPT(cfg, tp_config_single(), 512)
    assert count_params(cfg, 512) == sum(p.numel() for p in model.parameters())
    assert isinstance(model, torch.nn.Module)


def test_cli_warns_when_the_layout_does_not_fit() -> None:
    result = crucible_in_process("plan", "--set", "model.preset=70b", "--set", "plan.gpus=1")
    assert result.returncode == 0 and "does not fit 80 GB per GPU" in result.stdout


def crucible_plan(*args: str) -> subprocess.CompletedProcess[str]:
    return crucible_in_process("plan", *args)


def test_plan_speaks_in_human_units_and_uses_the_config_s_own_run() -> None:
    result = crucible_plan("--config", "configs/sample.yaml")
    assert result.returncode == 0, result.stderr
    title = " ".join(result.stdout.split())
    assert "3.95M parameters" in title and "dp=2" in title and "2 GPU(s), sequences of 256" in title
    assert " MB " in result.stdout and "0.00B" not in result.stdout and "0.0 GB" not in result.stdout
    gpu = " ".join(crucible_plan("--config", "configs/gpu_1b.yaml").stdout.split())
    assert "1.04B parameters" in gpu and "1 GPU(s), sequences of 2,048" in gpu


def test_plan_refuses_a_layout_the_trainer_would_refuse() -> None:
    result = crucible_plan("--set", "model.preset=7b", "--set", "parallel.tp=3", "--set", "plan.gpus=3")
    assert result.returncode == 2
    assert result.stderr.strip() == "crucible plan: n_heads 32 and n_kv_heads 32 must be divisible by tp 3"


def test_plan_hints_at_the_gpus_and_batch_a_month_long_run_needs() -> None:
    result = crucible_plan(
        "--set",
        "model.preset=70b",
        "--set",
        "plan.gpus=8",
        "--set",
        "train.global_batch_size=8",
        "--set",
        "train.micro_batch_size=1",
    )
    text = " ".join(result.stdout.split())
    assert "hint:" in text and "GPUs would take 30 days" in text and "train.global_batch_size of at least" in text


def test_plan_imports_no_deep_learning_framework() -> None:
    """What keeps `plan` instant: it reads configs and does arithmetic, nothing loads torch."""
    code = (
        "import sys; from pipeline.cli import main; main(['plan']); "
        "print(sorted(m for m in ('torch', 'deepspeed', 'megatron') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr[-2000:]


def test_plan_ends_with_the_commands_that_run_it_with_the_same_settings() -> None:
    result = crucible_plan("--config", "configs/sample.yaml", "--set", "model.n_heads=8")
    assert result.returncode == 0, result.stderr[-2000:]
    last = " ".join(result.stdout.split()).rsplit("next: ", 1)[-1]
    same = "--config configs/sample.yaml --set model.n_heads=8"
    assert last == f"crucible run {same} --output RUN on this machine, or crucible submit {same} --output RUN on Slurm"


def test_plan_of_a_run_that_would_not_fit_says_to_change_it_not_to_run_it() -> None:
    result = crucible_plan("--set", "model.preset=70b", "--set", "parallel.tp=8", "--set", "plan.gpus=8")
    text = " ".join(result.stdout.split())
    assert result.returncode == 0 and "does not fit" in text, result.stderr[-2000:]
    assert text.rsplit("next: ", 1)[-1].startswith("change the settings named above, then crucible plan --set")


def test_plan_names_the_setting_that_gives_it_gpus() -> None:
    result = crucible_plan("--set", "model.preset=70b", "--set", "parallel.tp=8")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "plan.gpus" in result.stderr and "launch.nproc_per_node" in result.stderr


def test_plan_says_when_data_goes_unread() -> None:
    result = crucible_plan("--config", "configs/sample.yaml", "--data", "nowhere")
    assert result.returncode == 0 and "--data is read only with train.mixture" in " ".join(result.stdout.split())


def test_a_preset_plans_its_usual_run_shape_and_says_what_it_assumed() -> None:
    """A 7b is planned with the sequence length and batch of 7B runs, not the tiny run's 256 x 8 (488 million steps
    for 1T tokens); the table shows them and the peak and memory per GPU it assumes."""
    from training.config import PRESET_RUNS, PlanConfig

    result = crucible_plan("--set", "model.preset=7b")
    assert result.returncode == 0, result.stderr[-2000:]
    text = " ".join(result.stdout.split())
    seq_len, batch = PRESET_RUNS["7b"]
    steps = int(text.split("steps for 1e+12 tokens │")[1].split("│")[0].replace(",", ""))
    assert steps == round(1e12 / (seq_len * batch)) and 1e5 < steps < 1e6
    assert f"tokens per step │ {seq_len * batch:,} ({batch:,} sequences of {seq_len:,}) │" in text
    defaults = PlanConfig()
    assert f"assumed peak per GPU (plan.peak_tflops) │ {defaults.peak_tflops:g} TFLOP/s │" in text
    assert f"assumed memory per GPU (plan.gpu_memory_gb) │ {defaults.gpu_memory_gb:g} GB │" in text
    assert (
        f"planned with the 7b preset's usual run (prep.pack.seq_len={seq_len}, train.global_batch_size={batch})" in text
    )
    assert f"--set prep.pack.seq_len={seq_len} --set train.global_batch_size={batch}" in text.rsplit("next: ", 1)[-1]

    own = " ".join(
        crucible_plan(
            "--set", "model.preset=7b", "--set", "train.global_batch_size=64", "--set", "plan.seq_len=2048"
        ).stdout.split()
    )
    assert "tokens per step │ 131,072 (64 sequences of 2,048) │" in own and "usual run" not in own


def test_plan_notes_a_warmup_longer_than_the_run() -> None:
    text = " ".join(crucible_plan("--set", "train.max_steps=5", "--set", "train.warmup_steps=8").stdout.split())
    assert (
        "note: train.warmup_steps 8 is longer than the run (train.max_steps 5): the learning rate never reaches "
        "train.lr"
    ) in text
    equal = crucible_plan("--set", "train.max_steps=8", "--set", "train.warmup_steps=8")
    assert equal.returncode == 0 and "longer than the run" not in equal.stdout
