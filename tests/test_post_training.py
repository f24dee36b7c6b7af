"""Post-training: the chat template against transformers, the records refused, the SFT loss against plain
PyTorch, SFT under every layout and across a resume; DPO's terms against TRL's, a DPO run that learns an easy
preference, and its resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.chat_data import BAD_PAIRS, BAD_RECORDS, conversations, write_chat, write_preferences
from tests.conftest import crucible_in_process, metrics, read_set, one_rank, ranks
from training.chat import ChatCodec, grow_tokenizer
from training.post_config import SFTConfig

SEQ = 64


@pytest.fixture(scope="module")
def base_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE of 512 tokens trained on real English text, as prep makes it."""
    from data_prep.tokenizer import TokenizerConfig, train_tokenizer

    tokenizer = train_tokenizer((r["text"] for r in read_set("english", 60)), TokenizerConfig(vocab_size=512))
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def test_chat_template_gives_crucibles_ids(base_tokenizer: Path, tmp_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    from training.export import tokenizer_config

    tokenizer, added = grow_tokenizer(base_tokenizer)
    assert added == list(range(512, 517))  # appended after the base vocabulary, in a fixed order
    assert grow_tokenizer(base_tokenizer)[0].to_str() == tokenizer.to_str()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(tokenizer, "<|endoftext|>", "<|pad|>", SEQ))
    )
    theirs = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    codec = ChatCodec(tokenizer)
    for messages in conversations(50, seed=1):
        ids, learn = codec.encode(messages)
        assert list(theirs.apply_chat_template(messages, tokenize=True, return_dict=False)) == ids
        assert len(learn) == len(ids) and sum(learn) > 0
        prompt = theirs.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True, return_dict=False)
        assert list(prompt) == codec.prompt(messages[:-1])


def test_bad_records_are_counted_with_their_reason(base_tokenizer: Path, tmp_path: Path) -> None:
    from training.post import read_chat

    chat = write_chat(tmp_path / "chat.jsonl", 40)
    ledger, splits = read_chat(chat, ChatCodec(grow_tokenizer(base_tokenizer)[0]), SFTConfig(val_fraction=0.2), SEQ)
    summary = ledger.summary()
    kept = sum(len(s) for s in splits.values())
    assert summary["read"] == 40 + len(BAD_RECORDS) == kept + sum(summary["rejected"].values())
    assert summary["kept"] == kept and splits["val"] and splits["train"]
    bad = {40 + i + 1: reason for i, (_, reason) in enumerate(BAD_RECORDS)}
    found = {r["line"]: r["reason"] for r in ledger.records}
    assert {line: found.get(line) for line in bad} == bad  # every bad line, under its own reason
    assert all(reason == "too_long" for line, reason in found.items() if line not in bad)  # long ones, if any


def reference_loss(model: torch.nn.Module, sequences: list[tuple[list[int], list[bool]]]) -> torch.Tensor:
    """Plain PyTorch: each conversation alone through the model, cross entropy over its learned targets only."""
    total, count = torch.zeros((), dtype=torch.float64), 0
    for ids, learn in sequences:
        tokens = torch.tensor([ids])
        logits = model(tokens[:, :-1], torch.arange(len(ids) - 1)[None], torch.zeros_like(tokens[:, :-1]))
        keep = torch.tensor(learn[1:])
        losses = F.cross_entropy(logits[0].float(), tokens[0, 1:], reduction="none")
        total += losses[keep].double().sum()
        count += int(keep.sum())
    return total / count


def test_sft_loss_matches_plain_pytorch(base_tokenizer: Path) -> None:
    """Packed rows, document masks and the loss mask give the loss of each conversation trained alone."""
    from training.config import ModelConfig
    from training.data import LOSS_MASK, make_batch
    from training.generate import single_process_groups
    from training.init import init_weights, load_full_weights
    from training.model import GPT, lm_loss
    from training.parallel import tp_config_single
    from training.post import pack

    tokenizer, _ = grow_tokenizer(base_tokenizer)
    codec = ChatCodec(tokenizer)
    sequences = [codec.encode(m) for m in conversations(12, seed=2, words=3)]
    pad = tokenizer.token_to_id("<|pad|>")
    tokens, starts, mask = pack(sequences, SEQ + 1, pad, seed=0)
    assert len(tokens) < len(sequences)  # several conversations to a row
    batch = make_batch(tokens.astype(np.int64), starts, np.arange(len(tokens)), True, {LOSS_MASK: mask}, pad)

    single_process_groups()
    cfg = ModelConfig(preset=None, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=64)
    base = GPT(cfg, tp_config_single(), 512)  # the base's vocabulary, before the chat markers
    init_weights(base, 7, cfg.n_layers)
    model = GPT(cfg, tp_config_single(), 640)
    load_full_weights(model, base.state_dict(), known_rows=512)
    embedding = model.embedding.weight.detach()
    assert torch.equal(embedding[:512], base.embedding.weight.detach())
    assert torch.allclose(embedding[512:], base.embedding.weight.detach().mean(0).expand(128, -1))
    with torch.no_grad():
        ours = lm_loss(model(batch.inputs, batch.positions, batch.segments), batch.targets, pad)
        assert float(ours) == pytest.approx(float(reference_loss(model, sequences)), abs=1e-6)
        everything = make_batch(tokens.astype(np.int64), starts, np.arange(len(tokens)), True, None, pad)
        unmasked = lm_loss(model(everything.inputs, everything.positions, everything.segments), everything.targets, pad)
    assert abs(float(unmasked) - float(ours)) > 1e-3  # the mask matters: a loss over every token differs


# -- whole runs under torchrun -------------------------------------------------------------------

TINY = [
    "model.preset=null",
    "model.d_model=32",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.n_kv_heads=2",
    "model.ffn_hidden=64",
    "train.global_batch_size=4",
    "train.micro_batch_size=2",
    "train.peak_tflops=1",
    "train.loggers=[]",
]
STEPS = 10
SFT = [
    *TINY,
    f"train.max_steps={STEPS}",
    f"train.decay_steps={STEPS}",
    "train.lr=1e-3",
    "train.warmup_steps=2",
    "train.eval_interval=5",
    "checkpoint.interval=5",
    "post.sft.val_fraction=0.1",
]


def flags(settings: list[str]) -> list[str]:
    return [arg for setting in settings for arg in ("--set", setting)]


@pytest.fixture(scope="module")
def base_run(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("base")
    one_rank(
        "train",
        "--data",
        str(tiny_shards),
        "--output",
        str(run),
        *flags([*TINY, "train.max_steps=2", "train.eval_batches=0"]),
    )
    return run


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_chat(tmp_path_factory.mktemp("chat") / "chat.jsonl", 120)


def sft(base: Path, chat: Path, run: Path, nproc: int = 1, *settings: str) -> list[dict]:
    ranks(nproc, "sft", "--checkpoint", str(base), "--data", str(chat), "--output", str(run), *flags([*SFT, *settings]))
    return metrics(run)


@pytest.fixture(scope="module")
def sft_run(base_run: Path, chat_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("sft")
    sft(base_run, chat_file, run)
    return run


@pytest.fixture(scope="module")
def single(sft_run: Path) -> list[dict]:
    return metrics(sft_run)


@pytest.mark.slow
@pytest.mark.parametrize(("tp", "pp", "dp"), [(2, 1, 1), (1, 2, 1), (1, 1, 2)])
def test_sft_layouts_match_single_process(
    single: list[dict], base_run: Path, chat_file: Path, tmp_path: Path, tp: int, pp: int, dp: int
) -> None:
    curve = sft(base_run, chat_file, tmp_path, tp * pp * dp, f"parallel.tp={tp}", f"parallel.pp={pp}")
    assert [r["step"] for r in curve] == list(range(1, STEPS + 1))
    assert single[-1]["loss"] < single[0]["loss"]
    for ours, ref in zip(curve, single):
        assert ours["loss"] == pytest.approx(ref["loss"], rel=1e-4), f"step {ref['step']}"
        assert ours["tokens"] == ref["tokens"]  # the same learned (assistant) targets
        if "val_loss" in ref:
            assert ours["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-4)


@pytest.mark.slow
def test_sft_resumes_exactly(single: list[dict], base_run: Path, chat_file: Path, tmp_path: Path) -> None:
    first = sft(base_run, chat_file, tmp_path, 1, "train.max_steps=5")  # stops at step 5, its checkpoint saved
    assert [r["step"] for r in first] == [1, 2, 3, 4, 5]
    resumed = sft(base_run, chat_file, tmp_path)  # the same command goes on from step 5 to 10
    assert [r["loss"] for r in resumed] == [r["loss"] for r in single]
    stats = json.loads((tmp_path / "data" / "stats.json").read_text())
    assert stats["records"]["read"] == 120 + len(BAD_RECORDS)
    assert stats["tokenizer"]["added"] == {
        "<|system|>": 512,
        "<|user|>": 513,
        "<|assistant|>": 514,
        "<|tool|>": 515,
        "<|end|>": 516,
    }


# -- DPO -----------------------------------------------------------------------------------------


def test_bad_pairs_are_counted_with_their_reason(base_tokenizer: Path, tmp_path: Path) -> None:
    from training.dpo import read_preferences
    from training.post_config import DPOConfig

    prefs = write_preferences(tmp_path / "prefs.jsonl", 30)
    ledger, splits = read_preferences(prefs, ChatCodec(grow_tokenizer(base_tokenizer)[0]), DPOConfig(), SEQ)
    summary = ledger.summary()
    assert summary["read"] == 30 + len(BAD_PAIRS) == summary["kept"] + sum(summary["rejected"].values())
    assert summary["kept"] == 30 == sum(len(pairs) for pairs in splits.values())  # every layout TRL reads is kept
    found = {r["line"]: r["reason"] for r in ledger.records}
    assert found == {30 + i + 1: reason for i, (_, reason) in enumerate(BAD_PAIRS)}
    ids, side, second = splits["train"][0]
    assert {1, 2} <= set(side) and side[:second].count(2) == 0 and side[second:].count(1) == 0
    assert ids[: side.index(1)] == ids[second : second + side.index(1)]  # the same prompt before both replies


def trl_metrics(
    per_token: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor, beta: float
) -> tuple[float, dict[str, float]]:
    """TRL's own DPOTrainer._compute_loss on these log-probabilities (rows: the chosen replies, then the rejected
    ones), around it only what it reads: its config's defaults, a model that returns them, an accelerator of one."""
    from collections import defaultdict
    from types import SimpleNamespace

    from trl import DPOConfig
    from trl.trainer.dpo_trainer import DPOTrainer as TRLTrainer

    args = DPOConfig(
        output_dir="unused", beta=beta, precompute_ref_log_probs=True, report_to=[], bf16=False, use_cpu=True
    )
    rows, width = mask.shape
    outputs = SimpleNamespace(
        log_probs=per_token,
        entropy=torch.zeros_like(per_token),
        mean_logits=torch.zeros_like(per_token),
        is_top1=torch.zeros_like(per_token, dtype=torch.bool),
    )
    one = SimpleNamespace(device="cpu", gather=lambda t: t, gather_for_metrics=lambda t: t)
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=one,
        aux_loss_enabled=False,
        beta=args.beta,
        precompute_ref_logps=args.precompute_ref_log_probs,
        loss_types=args.loss_type,
        loss_weights=args.loss_weights or [1.0] * len(args.loss_type),
        ld_alpha=args.ld_alpha,
        f_divergence_type=args.f_divergence_type,
        label_smoothing=args.label_smoothing,
        use_weighting=args.use_weighting,
        _metrics={"train": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros(rows, width, dtype=torch.long),
        "attention_mask": torch.ones(rows, width),
        "completion_mask": mask,
        "ref_chosen_logps": reference[:, 0],
        "ref_rejected_logps": reference[:, 1],
    }
    loss = TRLTrainer._compute_loss(trainer, lambda **_: outputs, inputs, False)
    return float(loss), {name: values[-1] for name, values in trainer._metrics["train"].items()}


def test_dpo_terms_match_trl() -> None:
    """Loss, rewards, margins and accuracy from the same log-probabilities, ours against TRL's real code."""
    from training.dpo import dpo_terms

    generator = torch.Generator().manual_seed(3)
    pairs, width, beta = 32, 24, 0.3
    mask = (torch.rand(2 * pairs, width, generator=generator) < 0.6).long()
    per_token = -3 * torch.rand(2 * pairs, width - 1, generator=generator, dtype=torch.float64) * mask[:, 1:]
    sums = per_token.sum(1)
    policy = torch.stack([sums[:pairs], sums[pairs:]], dim=1)  # [pairs, (chosen, rejected)]
    reference = policy + torch.randn(pairs, 2, generator=generator, dtype=torch.float64)
    loss, theirs = trl_metrics(per_token, mask, reference, beta)
    ours = {name: float(value.mean()) for name, value in dpo_terms(policy, reference, beta).items()}
    assert 0.2 < ours["rewards/accuracy"] < 0.8  # both outcomes occur, so the comparison can fail
    assert ours["loss"] == pytest.approx(loss, abs=1e-6)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert ours[name] == pytest.approx(theirs[name], abs=1e-6), name
    assert ours["rewards/accuracy"] == pytest.approx(theirs["rewards/accuracies"], abs=1e-6)


DPO_STEPS = 16
DPO = [
    f"train.max_steps={DPO_STEPS}",
    f"train.decay_steps={DPO_STEPS}",
    "train.eval_interval=1",
    "train.lr=2e-3",
    "train.global_batch_size=8",
    "train.eval_batches=4",
    "checkpoint.interval=8",
    "post.dpo.beta=0.5",
    "post.dpo.val_fraction=0.25",
]


@pytest.fixture(scope="module")
def prefs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_preferences(tmp_path_factory.mktemp("prefs") / "prefs.jsonl", 160)


def dpo(start: Path, prefs: Path, run: Path, *settings: str, nproc: int = 1) -> list[dict]:
    ranks(
        nproc,
        "dpo",
        "--checkpoint",
        str(start),
        "--data",
        str(prefs),
        "--output",
        str(run),
        *flags([*SFT, *DPO, *settings]),
    )
    return metrics(run)


@pytest.fixture(scope="module")
def dpo_run(sft_run: Path, prefs_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("dpo")
    dpo(sft_run, prefs_file, run)
    return run


@pytest.mark.slow
def test_dpo_learns_an_easy_preference(dpo_run: Path) -> None:
    """From the SFT model, held-out preference accuracy rises; the first step starts at the reference itself."""
    curve = metrics(dpo_run)
    assert [r["step"] for r in curve] == list(range(1, DPO_STEPS + 1))
    first = curve[0]  # before any update the policy is the reference: rewards 0, loss log 2
    assert first["rewards/chosen"] == pytest.approx(0, abs=1e-5) and first["loss"] == pytest.approx(np.log(2), abs=1e-5)
    evals = [r for r in curve if "val_loss" in r]
    assert [r["step"] for r in evals] == list(range(1, DPO_STEPS + 1))  # the first after one small update
    assert evals[-1]["val_rewards/accuracy"] > evals[0]["val_rewards/accuracy"]
    assert evals[-1]["val_rewards/margins"] > evals[0]["val_rewards/margins"] > 0
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    stats = json.loads((dpo_run / "data" / "stats.json").read_text())
    assert stats["records"]["read"] == 160 + len(BAD_PAIRS) and stats["records"]["kept"] == 160
    assert stats["tokenizer"]["added"] == {}  # the SFT run's tokenizer has the markers already


@pytest.mark.slow
def test_dpo_resumes_exactly(dpo_run: Path, sft_run: Path, prefs_file: Path, tmp_path: Path) -> None:
    first = dpo(sft_run, prefs_file, tmp_path, "train.max_steps=8")
    assert [r["step"] for r in first] == list(range(1, 9))
    reference = (tmp_path / "data" / "reference" / "train.npy").read_bytes()
    resumed = dpo(sft_run, prefs_file, tmp_path)  # the same command goes on from step 8, reading the stored reference
    assert (tmp_path / "data" / "reference" / "train.npy").read_bytes() == reference
    whole = metrics(dpo_run)
    for name in ("loss", "rewards/margins", "rewards/accuracy"):
        assert [r[name] for r in resumed] == [r[name] for r in whole], name
    assert [r["val_rewards/accuracy"] for r in resumed if "val_loss" in r] == [
        r["val_rewards/accuracy"] for r in whole if "val_loss" in r
    ]


@pytest.mark.slow
@pytest.mark.parametrize(("tp", "dp"), [(2, 1), (1, 2)])
def test_dpo_layouts_match_single_process(
    dpo_run: Path, sft_run: Path, prefs_file: Path, tmp_path: Path, tp: int, dp: int
) -> None:
    """Vocabulary-parallel log-probabilities (TP) and pairs dealt over ranks (DP) give the one-process run's terms."""
    curve = dpo(sft_run, prefs_file, tmp_path, f"parallel.tp={tp}", nproc=tp * dp)
    whole = metrics(dpo_run)
    assert [r["step"] for r in curve] == [r["step"] for r in whole]
    for ours, ref in zip(curve, whole):
        for name in ("loss", "rewards/margins", "val_loss", "val_rewards/margins"):
            assert ours[name] == pytest.approx(ref[name], rel=1e-4, abs=1e-6), f"{name} at step {ref['step']}"
        assert ours["val_rewards/accuracy"] == ref["val_rewards/accuracy"] and ours["tokens"] == ref["tokens"]


@pytest.mark.slow
def test_dpo_under_pipeline_parallelism_is_refused_in_one_line(sft_run: Path, prefs_file: Path, tmp_path: Path) -> None:
    """Refused before its data is built or a rank starts."""
    result = crucible_in_process(
        "dpo",
        "--checkpoint",
        sft_run,
        "--data",
        prefs_file,
        "--output",
        tmp_path,
        *flags([*SFT, *DPO, "parallel.pp=2"]),
    )
    assert result.returncode != 0
    assert result.stderr.strip() == (
        "crucible dpo: dpo with parallel.pp > 1 is not supported yet: use tensor and data parallelism "
        "(parallel.tp, more processes) and ZeRO"
    )
    assert not any(tmp_path.iterdir())


# -- generate --chat -----------------------------------------------------------------------------


@pytest.mark.slow
def test_generate_chat_stops_at_the_end_of_turn(base_run: Path, tmp_path: Path) -> None:
    """After a short SFT on conversations where the assistant always answers "yes", the model says yes and then
    <|end|>; the chat answer is cut there, where decoding without a stop runs on to its token budget."""
    from tokenizers import Tokenizer

    from training.config import SamplesConfig
    from training.generate import chat_prompt, generate, load_model, sample_texts

    chat = tmp_path / "yes.jsonl"
    chat.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": " ".join(m[0]["content"].split()[:4])},
                        {"role": "assistant", "content": "yes"},
                    ]
                }
            )
            + "\n"
            for m in conversations(80, seed=4)
        )
    )
    run = tmp_path / "run"
    sft(
        base_run,
        chat,
        run,
        1,
        "train.max_steps=40",
        "train.decay_steps=400",
        "train.lr=1e-2",
        "train.eval_batches=0",
        "checkpoint.interval=0",
    )
    checkpoint = max((run / "checkpoints").glob("step-*"))
    tokenizer_file = run / "data" / "shards" / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    codec = ChatCodec(tokenizer)
    yes = tokenizer.encode("yes", add_special_tokens=False).ids
    model, _ = load_model(checkpoint)
    sampling = SamplesConfig(prompts=["is the sky blue"], max_new_tokens=12, temperature=0)
    prompt, vocab = chat_prompt(codec, "is the sky blue"), tokenizer.get_vocab_size()
    free = generate(model, prompt, sampling, vocab, None)
    assert free[: len(yes) + 1] == [*yes, codec.end_id] and len(free) == sampling.max_new_tokens  # it ends its turn
    assert generate(model, prompt, sampling, vocab, codec.end_id) == yes  # the stop generate --chat uses cuts there
    [(_, answer)] = sample_texts(checkpoint, tokenizer_file, sampling, chat=True)
    assert answer == "yes"
