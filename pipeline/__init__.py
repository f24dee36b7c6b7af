"""pipeline: the front door (CLI, root config, plan, executors, report).

Every Crucible process starts here (the CLI, the prep workers it spawns, `prep-task` under Slurm),
so this is where process-wide settings go before any library loads. Arrow's default allocator
(mimalloc) keeps memory that a task has freed, and a global prep task frees a lot: the MinHash
clusters task's peak grew ~54 bytes per corpus document with it and ~28 with the system
allocator (bench/scale_bench.py, 25k-400k documents). Arrow reads the choice when it is first
imported; a user's own ARROW_DEFAULT_MEMORY_POOL wins.
"""

import os

os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
