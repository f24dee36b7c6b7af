"""Every rank and verb process imports the trainer: that import must stay lean and leave torch whole."""

import subprocess
import sys

PROBE = """
import sys, torch
compile_before = torch.compile
import training.engine
heavy = sorted(name for name in ("torch._dynamo", "torch._inductor", "mlflow", "wandb") if name in sys.modules)
print(heavy, torch.compile is compile_before)
"""


def test_importing_the_trainer_loads_no_compiler_or_tracker_and_leaves_torch_compile_whole() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[-2] == "[] True"


def test_the_model_still_compiles_after_the_import() -> None:
    probe = PROBE + "print(torch.compile(lambda x: x * 2)(torch.ones(2)).tolist())\n"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[-2] == "[2.0, 2.0]"
