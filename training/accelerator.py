"""Imported before DeepSpeed: without CUDA, DeepSpeed is told it runs on the CPU.

DeepSpeed picks its accelerator when it is first imported and, left to guess, warns that it
fell back to the CPU, a line on the console of every run on a machine without a GPU.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
