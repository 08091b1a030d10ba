"""`python -m amygdala.train_steering_vectors …` — the original entry point, same as `amygdala train`."""

from amygdala.cli import run_subcommand

if __name__ == "__main__":
    raise SystemExit(run_subcommand("train"))
