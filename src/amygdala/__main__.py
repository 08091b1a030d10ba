"""`python -m amygdala …` is the `amygdala` console script, for environments without it on PATH."""

from amygdala.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
