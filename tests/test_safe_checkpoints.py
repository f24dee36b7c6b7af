"""Hostile and damaged checkpoints: no code runs from them, nothing is overwritten, every refusal is one line."""

from __future__ import annotations

import enum
import json
import os
import pickle
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch

from pipeline.ground.hashing import file_sha256
from tests.trainer_harness import train_in_process
from tests.conftest import REPO
from tests.conftest import crucible_in_process as crucible

SMALL = [
    "--set",
    "train.global_batch_size=8",
    "--set",
    "train.micro_batch_size=2",
    "--set",
    "train.eval_interval=1000",
    "--set",
    "train.warmup_steps=2",
    "--set",
    "train.decay_steps=8",
    "--set",
    "train.peak_tflops=1",
]


class Payload:
    """Unpickling this runs a shell command that creates `marker`: what a planted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def refused(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The one-line message of a refusal (exit status 2, no traceback) that contains every needle."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("crucible")]
    assert len(lines) == 1 and all(n in lines[0] for n in needles), result.stderr[-3000:]
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def rehash(checkpoint: Path, **fields: object) -> None:
    """Record the files' current hashes (and any `fields`) and the digest of it all, as someone who planted a
    file and knows the format would."""
    from training.checkpoint_meta import META_DIGEST, meta_digest

    meta_path = checkpoint / "crucible.json"
    meta = json.loads(meta_path.read_text())
    meta["files"] = {name: file_sha256(checkpoint / name) for name in meta["files"]}
    meta |= fields
    meta_path.write_text(json.dumps(meta | {META_DIGEST: meta_digest(meta)}))


@pytest.fixture(scope="module")
def trained(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with checkpoints at steps 2 and 4 (ZeRO-1, one rank, trained in this process)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train_in_process(tiny_shards, run, 4, "train.warmup_steps=2", "train.decay_steps=8", "checkpoint.interval=2")
    return run


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def test_payload_in_either_pickle_format_is_refused_naming_the_file(tmp_path: Path) -> None:
    from training.safe_load import UnsafeCheckpoint, load

    marker = tmp_path / "ran"
    plain, zipped, raw = tmp_path / "plain.pt", tmp_path / "zipped.pt", tmp_path / "raw.pt"
    torch.save({"module": {"w": torch.ones(2)}}, plain)
    torch.save({"module": {"w": torch.ones(2)}, "extra": Payload(marker)}, zipped)
    raw.write_bytes(pickle.dumps(Payload(marker)))
    for path in (zipped, raw):
        with pytest.raises(UnsafeCheckpoint, match=f"refused to load {path}"):
            load(path)
    assert not marker.exists()
    assert load(plain)["module"]["w"].sum() == 2


class ByName(pickle.Pickler):
    """Pickles an enum member as `getattr(EnumClass, name)`, as Python 3.11.2 does (Debian 12's), or any
    attribute that way when asked."""

    attribute: tuple[object, str] | None = None

    def reducer_override(self, obj):
        if isinstance(obj, enum.Enum):
            return getattr, (type(obj), obj.name)
        if obj is ByName:
            return getattr, ByName.attribute
        return NotImplemented


def test_enum_members_pickled_by_name_load_and_other_getattr_calls_are_refused(tmp_path: Path) -> None:
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from training.safe_load import UnsafeCheckpoint, load

    by_name = types.ModuleType("by_name")
    by_name.__dict__.update(Pickler=ByName, Unpickler=pickle.Unpickler, load=pickle.load, dump=pickle.dump)
    good = tmp_path / "zero.pt"
    torch.save({"zero_stage": ZeroStageEnum.optimizer_states, "w": torch.ones(2)}, good, pickle_module=by_name)
    assert b"getattr" in zipfile.ZipFile(good).read("zero/data.pkl")
    assert load(good)["zero_stage"] is ZeroStageEnum.optimizer_states
    for attribute in [(ZeroStageEnum, "__init__"), (ZeroStageEnum, "_member_map_")]:
        ByName.attribute = attribute
        bad = tmp_path / f"{attribute[1]}.pt"
        torch.save({"x": ByName}, bad, pickle_module=by_name)
        with pytest.raises(UnsafeCheckpoint, match=f"refused to load {bad}.*Unsupported getattr"):
            load(bad)


def test_checkpoint_whose_every_pt_file_carries_a_payload_is_refused_and_never_runs(
    run: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "payload-ran"
    checkpoints = run / "checkpoints"
    planted = sorted(checkpoints.rglob("*.pt"))
    assert planted, "the run has DeepSpeed files to plant payloads in"
    for path in planted:
        torch.save({"module": {}, "payload": Payload(marker)}, path)
    for checkpoint in checkpoints.glob("step-*"):
        rehash(checkpoint)
    before = snapshot(checkpoints)
    newest = checkpoints / "step-00000004"

    resumed = crucible("train", "--data", tiny_shards, "--output", run, *SMALL, "--set", "train.max_steps=6")
    resumed_from = crucible(
        "train",
        "--data",
        tiny_shards,
        "--output",
        tmp_path / "elsewhere",
        *SMALL,
        "--set",
        "train.max_steps=6",
        "--resume",
        checkpoints / "step-00000002",
    )
    generated = crucible("generate", "--checkpoint", newest, "--prompt", "The", "--max-new-tokens", "4")
    exported = crucible("export", "--checkpoint", newest, "--output", tmp_path / "hf")
    for result in (resumed, resumed_from, generated, exported):
        line = refused(result, "refused to load", str(checkpoints))
        assert any(str(path) in line for path in planted), line
    assert not marker.exists(), "a payload ran"
    assert snapshot(checkpoints) == before


def test_checkpoints_present_but_none_loadable_stop_train_and_are_kept(run: Path, tiny_shards: Path) -> None:
    checkpoints = run / "checkpoints"
    for model_file in checkpoints.glob("step-*/mp_rank_00_model_states.pt"):
        model_file.unlink()
    before, metrics = snapshot(checkpoints), (run / "metrics.jsonl").read_text()
    result = crucible("train", "--data", tiny_shards, "--output", run, *SMALL, "--set", "train.max_steps=6")
    refused(result, "none can be loaded", "--resume none", "mp_rank_00_model_states.pt is missing")
    assert snapshot(checkpoints) == before
    assert (run / "metrics.jsonl").read_text() == metrics


def test_torn_crucible_json_is_skipped_by_train_and_named_by_generate(run: Path, tiny_shards: Path) -> None:
    from training.checkpoint import Checkpointer
    from training.config import CheckpointConfig

    torn = run / "checkpoints" / "step-00000004"
    (torn / "crucible.json").write_text('{"step": 4, "files": {')
    assert [c.step for c in Checkpointer(run, CheckpointConfig(), rank=0).published()] == [2]
    assert Checkpointer(run, CheckpointConfig(), rank=0).latest() is None  # `run` then samples nothing

    generated = crucible("generate", "--checkpoint", torn, "--prompt", "The")
    refused(generated, str(torn / "crucible.json"), "damaged")
    result = crucible(
        "train",
        "--data",
        tiny_shards,
        "--output",
        run,
        *SMALL,
        "--set",
        "train.max_steps=6",
        "--set",
        "checkpoint.interval=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(torn / "crucible.json") in result.stderr
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "resume"] == [2]
    assert json.loads((torn / "crucible.json").read_text())["step"] == 4, "redone from step 2 and saved again"


def test_disk_full_during_a_save_names_the_folder_and_the_free_space(tiny_shards: Path, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        result = crucible(
            "train", "--data", tiny_shards, "--output", small / "run", *SMALL, "--set", "train.max_steps=2"
        )
        line = refused(
            result, str(small / "run" / "checkpoints" / ".staging" / "step-00000002"), "MiB free", "disk is full"
        )
        assert "basic_ios" not in line
        assert not (small / "run" / "checkpoints" / ".staging" / "step-00000002").exists(), "space given back"
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_export_refuses_a_file_and_a_non_empty_folder_unless_forced(trained: Path, tmp_path: Path) -> None:
    checkpoint = trained / "checkpoints" / "step-00000004"
    a_file = tmp_path / "model.txt"
    a_file.write_text("keep me")
    refused(crucible("export", "--checkpoint", checkpoint, "--output", a_file), "is a file")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "model.safetensors").write_text("an earlier export")
    refused(
        crucible("export", "--checkpoint", checkpoint, "--output", folder, "--format", "consolidated"),
        "not empty",
        "--force",
    )
    assert (folder / "model.safetensors").read_text() == "an earlier export"
    forced = crucible("export", "--checkpoint", checkpoint, "--output", folder, "--format", "consolidated", "--force")
    assert forced.returncode == 0, forced.stderr[-3000:]

    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as exported:
        assert json.loads(exported.metadata()["config"])["model"]["n_layers"] == 4
        assert exported.metadata()["step"] == "4"


def test_generate_checks_tokenizer_prompt_length_and_flags(trained: Path, tiny_shards: Path, tmp_path: Path) -> None:
    checkpoint = trained / "checkpoints" / "step-00000004"
    other = tmp_path / "other-tokenizer.json"
    other.write_text(json.dumps(json.loads((tiny_shards / "tokenizer.json").read_text()) | {"added_tokens": []}))
    refused(crucible("generate", "--checkpoint", checkpoint, "--tokenizer", other), str(other), "is not the one")
    refused(crucible("generate", "--checkpoint", checkpoint, "--max-new-tokens", "-5"), "--max-new-tokens", "got -5")

    long_prompt = " ".join(["history"] * 200)  # well over the 64 tokens the model was trained on
    result = crucible(
        "generate", "--checkpoint", checkpoint, "--prompt", long_prompt, "--max-new-tokens", "3", "--temperature", "0"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "longer than the 64 the model was trained on; keeping its last 64" in result.stderr


# -- the allow-list: a folder is read only when it holds exactly the files its crucible.json lists ----------

NEWEST = "checkpoints/step-00000004"


def plant_payload(path: Path, marker: Path) -> Path:
    torch.save({"module": {}, "payload": Payload(marker)}, path)
    return path


def extra_file(name: str):
    """A payload in a file DeepSpeed's converter would pick up by its name, whatever the extension."""

    def tamper(checkpoint: Path, marker: Path) -> Path:
        return plant_payload(checkpoint / name, marker)

    tamper.__name__ = f"extra {name}"
    return tamper


def symlinked_folder(checkpoint: Path, marker: Path) -> Path:
    elsewhere = checkpoint.parent.parent / "elsewhere"
    elsewhere.mkdir()
    plant_payload(elsewhere / "mp_rank_00_model_states.pt", marker)
    (checkpoint / "zero").symlink_to(elsewhere, target_is_directory=True)
    return checkpoint / "zero"


def fifo(checkpoint: Path, marker: Path) -> Path:
    os.mkfifo(checkpoint / "mp_rank_01_model_states.pt")
    return checkpoint / "mp_rank_01_model_states.pt"


def name_outside(checkpoint: Path, marker: Path) -> Path:
    """crucible.json lists a file outside the folder (re-digested, as a forger would)."""
    meta = json.loads((checkpoint / "crucible.json").read_text())
    rehash(checkpoint, files=meta["files"] | {"../../../../etc/hostname": "0" * 64})
    return Path("../../../../etc/hostname")


def edited_layout(checkpoint: Path, marker: Path) -> Path:
    """The layout edited to force a conversion, crucible.json's digest left as it was."""
    meta = json.loads((checkpoint / "crucible.json").read_text())
    meta["layout"]["zero_stage"] = 2
    (checkpoint / "crucible.json").write_text(json.dumps(meta))
    return checkpoint / "crucible.json"


TAMPERINGS = [
    extra_file("mp_rank_01_model_states.bak"),
    extra_file("zero_pp_rank_1_mp_rank_00_optim_states.old"),
    extra_file("mp_rank_01_model_states"),
    symlinked_folder,
    fifo,
    name_outside,
    edited_layout,
]


def entries(folder: Path) -> dict[str, tuple[int, int]]:
    """Every entry under `folder` (links and FIFOs included, never followed or opened) by mode and mtime."""
    return {str(p.relative_to(folder)): (p.lstat().st_mode, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.parametrize("tamper", TAMPERINGS, ids=lambda t: t.__name__)
def test_a_tampered_checkpoint_is_refused_by_name_and_resume_passes_over_it_untouched(
    run: Path, tamper, tmp_path: Path
) -> None:
    from training.checkpoint import Checkpointer
    from training.config import CheckpointConfig
    from training.export import consolidate
    from training.checkpoint_meta import CorruptCheckpoint

    marker, newest = tmp_path / "payload-ran", run / NEWEST
    named = tamper(newest, marker)
    before = entries(newest)
    with pytest.raises(CorruptCheckpoint) as refusal:
        consolidate(newest)  # what generate, export and eval read a checkpoint with
    assert str(named) in str(refusal.value) and str(newest) in str(refusal.value)
    assert Checkpointer(run, CheckpointConfig(), rank=0).resolve("auto", events=None).step == 2
    assert not marker.exists(), "a payload ran"
    assert entries(newest) == before


@pytest.mark.slow
def test_every_verb_refuses_a_planted_deepspeed_file_in_one_line_and_resume_falls_back(
    run: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    marker, newest = tmp_path / "payload-ran", run / NEWEST
    planted = plant_payload(newest / "mp_rank_01_model_states", marker)
    before = entries(newest)
    for verb in (
        ["generate", "--prompt", "The", "--max-new-tokens", "2"],
        ["export", "--output", tmp_path / "hf"],
        ["eval", "--heldout"],
    ):
        refused(crucible(*verb, "--checkpoint", newest), str(planted), "not one of the files")
    resumed = crucible("train", "--data", tiny_shards, "--output", run, *SMALL, "--set", "train.max_steps=3")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert str(planted) in resumed.stderr and "Traceback" not in resumed.stderr
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "resume"][-1] == 2
    assert not marker.exists(), "a payload ran"
    assert entries(newest) == before


@pytest.mark.slow
def test_deepspeeds_converter_unpickles_weights_only_even_a_file_nothing_vetted(trained: Path, tmp_path: Path) -> None:
    """The last layer alone: the converter run as Crucible runs it, on a folder never checked."""
    marker = tmp_path / "payload-ran"
    folder = Path(shutil.copytree(trained / NEWEST, tmp_path / "step-00000004"))
    plant_payload(folder / "mp_rank_00_model_states.pt", marker)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.universal_convert",
            "--input_folder",
            str(folder),
            "--output_folder",
            str(tmp_path / "universal"),
            "--num_extract_workers",
            "1",
            "--num_merge_workers",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0 and "Weights only load failed" in result.stderr, result.stderr[-2000:]
    assert not marker.exists(), "a payload ran"


def test_weights_only_loads_overrides_a_callers_weights_only_false(tmp_path: Path) -> None:
    from training.safe_load import weights_only_loads

    marker = tmp_path / "payload-ran"
    path = plant_payload(tmp_path / "planted.pt", marker)
    with weights_only_loads(), pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=False)
    assert not marker.exists(), "a payload ran"
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ, "the switch is handed back"


def plant_universal_cache(run: Path, marker: Path) -> Path:
    """A cache for step 4 that passes the old check (its crucible.json is the checkpoint's), with a symlinked
    folder of payloads that a plain walk for `*.pt` files would not descend."""
    cache = run / "checkpoints" / ".universal" / "step-00000004"
    payloads = run / "payloads"
    (payloads / "embed.weight").mkdir(parents=True)
    for state in ("fp32", "exp_avg", "exp_avg_sq"):
        plant_payload(payloads / "embed.weight" / f"{state}.pt", marker)
    cache.mkdir(parents=True)
    shutil.copy(run / NEWEST / "crucible.json", cache / "crucible.json")
    (cache / "zero").symlink_to(payloads, target_is_directory=True)
    (cache / "universal.json").write_text(json.dumps({}))
    return cache


def test_a_planted_universal_cache_is_never_used(run: Path, tmp_path: Path) -> None:
    from training.export import cached_universal

    plant_universal_cache(run, tmp_path / "payload-ran")
    assert cached_universal(run / NEWEST) is None


@pytest.mark.slow
def test_resume_across_layouts_rebuilds_a_planted_universal_cache(run: Path, tiny_shards: Path, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    cache = plant_universal_cache(run, marker)
    resumed = crucible(
        "train",
        "--data",
        tiny_shards,
        "--output",
        run,
        *SMALL,
        "--set",
        "train.max_steps=5",
        "--set",
        "parallel.zero_stage=2",
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not marker.exists(), "a payload ran"
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [(e["step"], e["universal"]) for e in events if e["event"] == "resume"][-1] == (4, True)
    assert not (cache / "zero").is_symlink(), "rebuilt by Crucible in a private folder"
    assert json.loads((cache / "universal.json").read_text()), "with its own file list"


@pytest.mark.parametrize("pointer", ["fifo", "folder", "escape", "garbage"])
def test_a_bad_latest_pointer_is_named_and_the_newest_good_checkpoint_used(
    run: Path, pointer: str, capsys: pytest.CaptureFixture
) -> None:
    from training.checkpoint import Checkpointer
    from training.config import CheckpointConfig

    latest = run / "checkpoints" / "latest"
    latest.unlink()
    {
        "fifo": lambda: os.mkfifo(latest),
        "folder": latest.mkdir,
        "escape": lambda: latest.write_text("../../x\n"),
        "garbage": lambda: latest.write_bytes(os.urandom(4096)),
    }[pointer]()
    assert Checkpointer(run, CheckpointConfig(), rank=0).newest_loadable().step == 4
    assert f"warning: {latest} " in capsys.readouterr().err


@pytest.mark.slow
def test_generate_from_a_run_whose_latest_is_a_fifo_samples_the_newest_checkpoint(run: Path) -> None:
    latest = run / "checkpoints" / "latest"
    latest.unlink()
    os.mkfifo(latest)
    result = crucible("generate", "--checkpoint", run, "--prompt", "The", "--max-new-tokens", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step-00000004" in result.stdout and f"{latest} is not a plain file" in result.stderr


@pytest.mark.slow
def test_resuming_a_checkpoint_of_another_model_size_is_one_line(
    trained: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    result = crucible(
        "train",
        "--data",
        tiny_shards,
        "--output",
        tmp_path / "other",
        *SMALL,
        "--set",
        "train.max_steps=6",
        "--set",
        "model.d_model=96",
        "--resume",
        trained / NEWEST,
    )
    refused(result, str(trained / NEWEST), "another model", "d_model")


def test_a_model_file_that_is_not_a_pickle_is_one_line(run: Path) -> None:
    from training.export import consolidate
    from training.checkpoint_meta import CorruptCheckpoint

    model_file = run / NEWEST / "mp_rank_00_model_states.pt"
    model_file.write_bytes(b"this is not a checkpoint\n" * 10)
    rehash(run / NEWEST)
    with pytest.raises(CorruptCheckpoint, match=f"cannot read checkpoint file {model_file}"):
        consolidate(run / NEWEST)
