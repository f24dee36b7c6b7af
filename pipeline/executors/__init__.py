"""Executors own processes, completion markers and progress; stages and tasks know nothing of them."""
