"""Hostile YAML as --config or --set: an alias bomb, a key given twice, an alias that loops and a number of
thousands of digits each end in one line, before anything walks the parsed values."""

from __future__ import annotations

import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import ConfigError, load_config
from tests.conftest import REPO, crucible_in_process

LEVELS = "abcdefghi"
# "Billion laughs": nine levels of nine aliases, 10^9 strings once written out, in ~350 bytes; the last level
# as a setting's value, which an error message would print whole.
BOMB = (
    '{}: &{} ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'.format(LEVELS[0], LEVELS[0])
    + "".join(f"{name}: &{name} [{','.join([f'*{below}'] * 9)}]\n" for below, name in zip(LEVELS, LEVELS[1:]))
    + "run_name: *i\n"
)
DUPLICATE = "train:\n  lr: 0.001\n  max_steps: 3\n  lr: 0.002\n"
HUGE = "train:\n  max_steps: " + "7" * 5000 + "\n"
LOOP = "prep:\n  inputs: &a [*a]\n"

# Imports everything first, then loads the file the test names once it has started its clock.
METERED = """
import sys
from pipeline.config import ConfigError, load_config
print("ready", flush=True)
path = sys.stdin.readline().strip()
try:
    load_config(path)
    print("loaded", flush=True)
except ConfigError as exc:
    print(str(exc).replace(chr(10), " | "), flush=True)
sys.stdin.readline()
"""


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set so far (VmHWM), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc")


def test_alias_bomb_is_refused_in_under_a_second_and_100_mb(tmp_path: Path) -> None:
    assert len(BOMB) < 400
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    child = subprocess.Popen(
        [sys.executable, "-c", METERED], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        before = peak_rss_mb(child.pid)
        started = time.perf_counter()
        child.stdin.write(f"{bomb}\n")
        child.stdin.flush()
        answered, _, _ = select.select([child.stdout], [], [], 30)
        assert answered, "no answer within 30 s: the bomb was expanded"
        message = child.stdout.readline().strip()
        seconds = time.perf_counter() - started
        grown = peak_rss_mb(child.pid) - before
    finally:
        child.kill()
        child.wait()
    assert "refused as an alias bomb" in message and f"--config {bomb}: line " in message, message
    assert seconds < 1.0, f"refused after {seconds:.2f} s"
    assert grown < 100, f"peak RSS grew by {grown:.0f} MB"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BOMB, "line 6: the alias *e expands the YAML past 2,097,152 values and characters: refused as an alias bomb"),
        (DUPLICATE, "line 4: key 'train.lr' appears twice"),
        (HUGE, "line 2: key 'train.max_steps': the integer 777777777777... (5,000 digits) is out of range"),
    ],
)
def test_hostile_config_is_one_line_from_the_command_line(text: str, expected: str, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    result = crucible_in_process("plan", "--config", str(config))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.strip().startswith(f"crucible: --config {config}: {expected}"), result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (LOOP, "--config C: line 2: the alias *a sits inside the value it names (a loop)"),
        (
            "prep:\n  sources:\n    - name: web\n      inputs: [x]\n      name: code\n",
            "--config C: line 5: key 'prep.sources.0.name' appears twice",
        ),
        (
            "train: {max_steps: 0x" + "f" * 17 + "}\n",
            "--config C: line 1: key 'train.max_steps': the integer 0xffffffffff",
        ),
        ("model: {d_model: 1}\nmodel: {d_model: 2}\n", "--config C: line 2: key 'model' appears twice"),
    ],
)
def test_more_hostile_configs_name_the_line_and_key(text: str, expected: str, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(config)
    assert str(error.value).startswith(expected.replace("C", str(config), 1)), str(error.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "train.max_steps=" + "9" * 5000,
            "--set train.max_steps: the integer 999999999999... (5,000 digits) is out of",
        ),
        (
            "train.max_steps=9223372036854775808",
            "--set train.max_steps: the integer 9223372036854775808 is out of range",
        ),
        (
            "prep.sources=[{name: a, inputs: [x], name: b}]",
            "--set prep.sources: key 'prep.sources.0.name' appears twice",
        ),
        ("prep.inputs=[&a [*a]]", "--set prep.inputs: the alias *a sits inside the value it names (a loop)"),
        ("train.lr=1.0e+999", "train.lr: Input should be a finite number"),
        ("train.lr=.nan", "train.lr: Input should be a finite number"),
    ],
)
def test_set_values_go_through_the_same_guarded_loader(
    override: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "Traceback" not in err, err
    assert len(err.splitlines()) <= 2 and len(err) < 300, err  # a schema error: its heading and one key


def test_the_largest_int64_and_aliases_of_sensible_size_still_load(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "train:\n  max_steps: 9223372036854775807\nprep:\n  langid:\n"
        "    keep_languages: &names [en, de]\n  read:\n    keep_fields: *names\n"
    )
    loaded = load_config(config)
    assert loaded.train.max_steps == 2**63 - 1
    assert loaded.prep.langid.keep_languages == ["en", "de"] == loaded.prep.read.keep_fields


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"train: {lr: 0.1}\n" + b"#" * (1 << 20), "larger than 1,048,576 bytes"),
        (b"train:\n  lr: \xff\xfe\n", "not UTF-8 text (byte 0xff at offset 13)"),
        (b"train:\n  lr: [1,\n", "line 3: expected the node content, but found '<stream end>' (not valid YAML)"),
    ],
)
def test_an_unusable_config_file_is_one_line(content: bytes, expected: str, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_bytes(content)
    with pytest.raises(ConfigError) as error:
        load_config(config)
    assert str(error.value).startswith(f"--config {config}: ") and expected in str(error.value), str(error.value)
    assert "\n" not in str(error.value)
