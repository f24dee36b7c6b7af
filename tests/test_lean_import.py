"""Every rank and verb process imports the trainer: that import must stay lean and leave torch whole."""

import subprocess
import sys

PROBE = """
import sys, torch
compile_before = torch.compile
import training.engine
heavy = sorted(name for name in ("torch._dynamo", "torch._inductor", "mlflow", "wandb") if name in sys.modules)
print(heavy, torch.compile is compile_before)
print(torch.compile(lambda x: x * 2)(torch.ones(2)).tolist())
"""


def test_importing_the_trainer_loads_no_compiler_or_tracker_and_the_model_still_compiles() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-2:] == ["[] True", "[2.0, 2.0]"]
