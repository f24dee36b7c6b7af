"""Checkpoints, exact resume and automatic recovery, with real ranks on gloo (one rank runs in the test's own
process, the single-process reference)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.config import LaunchConfig
from launch.torchrun import free_port, local_train_command
from tests.conftest import REPO, crucible_in_process, metrics, one_rank, torchrun
from training.config import STOPPED_FILE

BASE = [
    "--set",
    "train.global_batch_size=8",
    "--set",
    "train.micro_batch_size=2",
    "--set",
    "train.eval_interval=1000",
    "--set",
    "train.warmup_steps=3",
    "--set",
    "train.peak_tflops=1",
]


def train(shards: Path, run: Path, steps: int, *extra: str, nproc: int = 1, decay: int = 30, **kw) -> list[dict]:
    """`crucible train` on `nproc` ranks: one runs in this process (the single-process reference), more (or one
    with launcher arguments) under torchrun."""
    args = ["train", "--data", str(shards), "--output", str(run), *BASE]
    args += ["--set", f"train.max_steps={steps}", "--set", f"train.decay_steps={decay}", *extra]
    if nproc == 1 and not kw:
        one_rank(*args)
    else:
        torchrun(nproc, *args, **kw)
    return metrics(run)


def events(run: Path) -> list[dict]:
    path = run / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def losses(records: list[dict]) -> dict[int, float]:
    """The loss of each step that stood (rolled-back steps are marked `anomaly` and left out)."""
    return {r["step"]: r["loss"] for r in records if "anomaly" not in r}


def hooks(*specs: str) -> list[str]:
    return ["--set", "hooks=[" + ", ".join(specs) + "]"]


@pytest.mark.parametrize(("tp", "pp", "dp"), [(1, 1, 2), (2, 2, 1)])
def test_resume_continues_bit_for_bit(tiny_shards: Path, tmp_path: Path, tp: int, pp: int, dp: int) -> None:
    layout = ["--set", f"parallel.tp={tp}", "--set", f"parallel.pp={pp}", "--set", "parallel.zero_stage=1"]
    n = tp * pp * dp
    straight = losses(train(tiny_shards, tmp_path / "straight", 16, *layout, nproc=n, decay=16))
    train(tiny_shards, tmp_path / "split", 8, *layout, nproc=n, decay=16)
    assert [e["reason"] for e in events(tmp_path / "split") if e["event"] == "save"] == ["final"]
    resumed = losses(train(tiny_shards, tmp_path / "split", 16, *layout, nproc=n, decay=16))
    assert [e["step"] for e in events(tmp_path / "split") if e["event"] == "resume"] == [8]
    assert [resumed[s] for s in range(9, 17)] == [straight[s] for s in range(9, 17)]


def test_resume_under_another_dp_size_continues_the_curve(tiny_shards: Path, tmp_path: Path) -> None:
    straight = losses(train(tiny_shards, tmp_path / "dp1", 12, "--set", "checkpoint.interval=6", decay=12))
    checkpoint = tmp_path / "dp1" / "checkpoints" / "step-00000006"
    resumed = losses(train(tiny_shards, tmp_path / "dp2", 12, "--resume", str(checkpoint), nproc=2, decay=12))
    assert sorted(resumed) == list(range(7, 13))
    for step in range(7, 13):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-4)
    assert [e["universal"] for e in events(tmp_path / "dp2") if e["event"] == "resume"] == [True]


def test_another_tp_or_pp_is_refused_with_the_way_out(tiny_shards: Path, tmp_path: Path) -> None:
    train(tiny_shards, tmp_path, 2)
    result = torchrun(
        2,
        "train",
        "--data",
        str(tiny_shards),
        "--output",
        str(tmp_path),
        *BASE,
        "--set",
        "train.max_steps=4",
        "--set",
        "parallel.tp=2",
        check=False,
    )
    assert result.returncode != 0
    assert "saved with tp=1, pp=1" in result.stderr + result.stdout


@pytest.fixture(scope="module")
def two_ranks_straight(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    """The losses of an uninterrupted run of 12 steps on two ranks, which the interrupted ones must match."""
    return losses(train(tiny_shards, tmp_path_factory.mktemp("straight"), 12, nproc=2, decay=12))


def test_killed_rank_is_restarted_and_the_run_finishes_the_same(
    tiny_shards: Path, tmp_path: Path, two_ranks_straight: dict[int, float]
) -> None:
    marker = tmp_path / "killed-once"
    fault = hooks(f'{{target: "tests.fault_hooks:KillRankAt", args: {{step: 8, rank: 1, marker: "{marker}"}}}}')
    recovered = losses(
        train(
            tiny_shards,
            tmp_path / "faulty",
            12,
            "--set",
            "checkpoint.interval=5",
            *fault,
            nproc=2,
            decay=12,
            launcher_args=("--max-restarts", "3"),
        )
    )
    assert marker.exists(), "the rank was killed"
    assert {e["step"] for e in events(tmp_path / "faulty") if e["event"] == "resume"} == {5}
    assert recovered[12] == two_ranks_straight[12]


def test_kill_during_checkpoint_write_keeps_previous_latest(tiny_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    command = [
        "train",
        "--data",
        str(tiny_shards),
        "--output",
        str(run),
        *BASE,
        "--set",
        "train.max_steps=6",
        "--set",
        "train.decay_steps=8",
        "--set",
        "checkpoint.interval=3",
    ]
    driver = f"""
import os, signal, sys
import training.checkpoint as checkpoint
real_replace = os.replace
class KillBeforePublish:
    def __getattr__(self, name):
        return getattr(os, name)
    @staticmethod
    def replace(src, dst):
        if ".staging" in str(src) and str(src).endswith("step-00000006"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst)
checkpoint.os = KillBeforePublish()
from pipeline.cli import main
sys.exit(main({command!r}))
"""
    killed = subprocess.run([sys.executable, "-c", driver], cwd=REPO, capture_output=True, text=True)
    assert killed.returncode == -9
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000003"
    assert (run / "checkpoints" / ".staging" / "step-00000006").exists(), "the write was interrupted mid-way"
    finished = losses(train(tiny_shards, run, 8, decay=8))
    assert [e["step"] for e in events(run) if e["event"] == "resume"] == [3]
    assert not (run / "checkpoints" / ".staging").exists(), "the next save cleared the debris"
    straight = losses(train(tiny_shards, tmp_path / "straight", 8, decay=8))
    assert finished[8] == straight[8]


def test_corrupt_checkpoint_is_named_and_the_previous_one_loads(tiny_shards: Path, tmp_path: Path) -> None:
    train(tiny_shards, tmp_path, 6, "--set", "checkpoint.interval=3", decay=8)
    victim = tmp_path / "checkpoints" / "step-00000006" / "mp_rank_00_model_states.pt"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    result = one_rank(
        "train",
        "--data",
        str(tiny_shards),
        "--output",
        str(tmp_path),
        *BASE,
        "--set",
        "train.max_steps=8",
        "--set",
        "train.decay_steps=8",
    )
    assert str(victim) in result.stderr
    logged = events(tmp_path)
    assert any(e["event"] == "corrupt_checkpoint" and str(victim) in e["error"] for e in logged)
    assert [e["step"] for e in logged if e["event"] == "resume"] == [3]
    assert max(losses(metrics(tmp_path))) == 8


def test_nan_rolls_back_and_the_run_finishes(tiny_shards: Path, tmp_path: Path) -> None:
    fault = hooks('{target: "tests.fault_hooks:PoisonWeights", args: {step: 9}}')  # NaNs are judged at once
    records = train(tiny_shards, tmp_path, 14, "--set", "checkpoint.interval=4", *fault, decay=14)
    (rollback,) = [e for e in events(tmp_path) if e["event"] == "rollback"]
    assert rollback["reason"] == "nonfinite_loss" and rollback["step"] == 10 and rollback["restored_step"] == 8
    assert rollback["skipped"]["to"]["position"] > rollback["skipped"]["from"]["position"]
    assert [r["step"] for r in records if "anomaly" in r] == [10]
    final = losses(records)
    assert max(final) == 14 and all(v == v for v in final.values())


def test_a_rollback_passes_a_damaged_checkpoint_by_and_says_so(tiny_shards: Path, tmp_path: Path) -> None:
    fault = hooks(
        '{target: "tests.fault_hooks:PoisonWeights", args: {step: 9}}',
        '{target: "tests.fault_hooks:DamageSave", args: {step: 8}}',
    )
    records = train(tiny_shards, tmp_path, 12, "--set", "checkpoint.interval=4", *fault, decay=12)
    (rollback,) = [e for e in events(tmp_path) if e["event"] == "rollback"]
    assert rollback["restored_step"] == 4, "step 8's checkpoint is damaged: the one before it"
    assert any(e["event"] == "corrupt_checkpoint" and "step-00000008" in e["error"] for e in events(tmp_path))
    assert max(losses(records)) == 12


def test_loss_spike_from_junk_data_rolls_back_and_skips_the_window(tiny_shards: Path, tmp_path: Path) -> None:
    fault = hooks('{target: "tests.fault_hooks:JunkRows", args: {step: 16}}')
    records = train(
        tiny_shards,
        tmp_path,
        20,
        "--set",
        "checkpoint.interval=5",
        "--set",
        "rollback.min_history=10",
        *fault,
        decay=20,
    )
    (rollback,) = [e for e in events(tmp_path) if e["event"] == "rollback"]
    assert rollback["reason"] in ("loss_spike", "grad_norm_spike") and rollback["step"] == 16
    assert rollback["restored_step"] == 15 and rollback["lr_scale"] == 0.5
    rows_per_step = 8
    assert rollback["skipped"]["to"]["position"] - rollback["skipped"]["from"]["position"] == rows_per_step
    after = [r for r in records if r["step"] == 16 and "anomaly" not in r]
    assert len(after) == 1 and after[0]["loss"] < rollback["value"] - 1, "the junk rows were not seen again"
    assert max(losses(records)) == 20


def test_rollbacks_are_capped(tiny_shards: Path, tmp_path: Path) -> None:
    fault = hooks('{target: "tests.fault_hooks:PoisonWeights", args: {step: 5}}')
    result = crucible_in_process(
        "train",
        "--data",
        str(tiny_shards),
        "--output",
        str(tmp_path),
        *BASE,
        "--set",
        "train.max_steps=8",
        "--set",
        "checkpoint.interval=2",
        "--set",
        "rollback.max_rollbacks=0",
        *fault,
    )
    assert result.returncode != 0 and "gave up after 0 rollbacks" in result.stderr


def test_sigusr1_in_a_slurm_job_saves_and_stops_for_requeue_then_the_rerun_continues(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_ranks_straight: dict[int, float]
) -> None:
    """Slurm's warning before the time limit: the ranks save and exit 0, for the job script to requeue."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    fault = hooks('{target: "tests.fault_hooks:SignalAt", args: {step: 5, name: SIGUSR1}}')
    result = torchrun(
        2,
        "train",
        "--data",
        str(tiny_shards),
        "--output",
        str(tmp_path),
        *BASE,
        "--set",
        "train.max_steps=12",
        "--set",
        "train.decay_steps=12",
        *fault,
    )
    assert "SIGUSR1: checkpoint saved at step 5; stopping for requeue" in result.stdout
    assert max(r["step"] for r in metrics(tmp_path)) == 5
    assert json.loads((tmp_path / STOPPED_FILE).read_text()) == {"step": 5, "signal": "SIGUSR1"}
    assert [(e["step"], e["reason"]) for e in events(tmp_path) if e["event"] == "save"] == [(5, "signal")]
    assert any(e["event"] == "stop" and e["signal"] == "SIGUSR1" for e in events(tmp_path))
    assert losses(train(tiny_shards, tmp_path, 12, nproc=2, decay=12))[12] == two_ranks_straight[12]
    assert not (tmp_path / STOPPED_FILE).exists(), "the resumed run cleared the old cue to requeue"


def test_sigterm_outside_slurm_stops_at_step_n_of_m_and_the_same_command_resumes(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrapper's SIGTERM (a Ctrl-C turned into SIGTERM) is no requeue: the run says where it stopped and how to
    go on, and exits 143 (128 + SIGTERM) under the agent, as a process the signal ended."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    command = [
        sys.executable,
        "-m",
        "launch.agent",
        "--nproc_per_node",
        "2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
        "-m",
        "pipeline",
        "train",
        "--data",
        str(tiny_shards),
        "--output",
        str(tmp_path),
        *BASE,
        "--set",
        "train.max_steps=8",
        "--set",
        "train.decay_steps=8",
    ]
    fault = hooks('{target: "tests.fault_hooks:SignalAt", args: {step: 3, name: SIGTERM}}')
    stopped = subprocess.run(command + fault, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert stopped.returncode == 143 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert "stopped at step 3 of 8 by SIGTERM: checkpoint saved; the same command resumes from it" in stopped.stdout
    assert "requeue" not in stopped.stdout and "training finished" not in stopped.stdout
    assert "training stopped in" in stopped.stdout and "at step 3 of 8" in stopped.stdout
    assert (tmp_path / STOPPED_FILE).exists()

    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "training finished in" in resumed.stdout and "at step 8 of 8" in resumed.stdout
    assert [e["step"] for e in events(tmp_path) if e["event"] == "resume"] == [3]
    assert not (tmp_path / STOPPED_FILE).exists(), "the resumed run cleared the stale stopped.json"


def ctrl_c_after_three_steps(command: list[str], run: Path) -> tuple[subprocess.Popen, str, str]:
    """Start `command` as a terminal's job, press Ctrl-C once its run has logged three steps."""
    process = subprocess.Popen(
        command,
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    while len(metrics(run) if (run / "metrics.jsonl").exists() else []) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=300)
    return process, out, err


def test_ctrl_c_saves_and_stops_in_one_line_then_the_rerun_continues(tiny_shards: Path, tmp_path: Path) -> None:
    """Ctrl-C reaches torchrun's agent (its ranks run in sessions of their own); the agent passes it on,
    the ranks save after the same step and stop, and it ends in one message and status 130."""
    command = [
        sys.executable,
        "-m",
        "launch.agent",
        "--nproc_per_node",
        "2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
        "-m",
        "pipeline",
        "train",
        "--data",
        str(tiny_shards),
        "--output",
        str(tmp_path),
        *BASE,
        "--set",
        "train.max_steps=100000",
        "--set",
        "train.decay_steps=30",
    ]
    process, out, err = ctrl_c_after_three_steps(command, tmp_path)
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in out + err, err[-3000:]
    [stop] = [e for e in events(tmp_path) if e["event"] == "stop"]
    assert stop["signal"] == "SIGINT" and 3 <= stop["step"] < 100000
    assert [(e["step"], e["reason"]) for e in events(tmp_path) if e["event"] == "save"] == [(stop["step"], "signal")]
    assert f"interrupted: checkpoint saved at step {stop['step']}; the same command resumes from it" in out
    assert not (tmp_path / STOPPED_FILE).exists(), "not a cue for a job script to requeue"

    records = train(tiny_shards, tmp_path, stop["step"] + 2, nproc=2)
    assert [r["step"] for r in records][-3:] == [stop["step"], stop["step"] + 1, stop["step"] + 2]
    assert any(e["event"] == "resume" and e["step"] == stop["step"] for e in events(tmp_path))


@pytest.mark.parametrize(("shutdown_seconds", "saved"), [(2, False), (20, True)])
def test_torchrun_gives_the_ranks_launch_shutdown_seconds_to_save(
    tiny_shards: Path, tmp_path: Path, shutdown_seconds: int, saved: bool
) -> None:
    """A save that takes 6 s: torchrun waits `launch.shutdown_seconds` after Ctrl-C, then kills the ranks
    (torchrun's own default, 30 s, would let both finish)."""
    overrides = [
        *BASE,
        "--set",
        "train.max_steps=100000",
        "--set",
        "train.decay_steps=30",
        *hooks('{target: "tests.fault_hooks:SlowSave", args: {seconds: 6}}'),
    ][1::2]  # the values of --set
    command = local_train_command(
        LaunchConfig(nproc_per_node=1, shutdown_seconds=shutdown_seconds), None, overrides, tiny_shards, tmp_path
    )
    process, out, err = ctrl_c_after_three_steps(command, tmp_path)
    assert process.returncode == 130 and "Traceback" not in out + err, err[-3000:]
    assert ("interrupted: checkpoint saved at step" in out) == saved, out[-2000:]


def test_retention_keeps_last_every_mth_and_latest(tiny_shards: Path, tmp_path: Path) -> None:
    train(
        tiny_shards,
        tmp_path,
        10,
        "--set",
        "checkpoint.interval=2",
        "--set",
        "checkpoint.keep_last=2",
        "--set",
        "checkpoint.keep_every=4",
        decay=10,
    )
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert kept == ["step-00000004", "step-00000008", "step-00000010"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-00000010"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == sorted([*kept, "latest"]), (
        "nothing but checkpoints and the pointer: no staging folder, no DeepSpeed helper scripts"
    )
