"""`python -m amygdala.extract_training_pairs …` — the original entry point, same as `amygdala extract`."""

from amygdala.cli import run_subcommand

if __name__ == "__main__":
    raise SystemExit(run_subcommand("extract"))
