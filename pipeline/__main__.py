"""``python -m pipeline <stage> ...``: one subcommand per stage."""

from pipeline.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
