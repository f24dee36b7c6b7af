"""`python -m pipeline <verb>`: the one front door."""

from pipeline.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
