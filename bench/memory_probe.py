"""Where `amygdala train`'s memory goes, stage by stage, for one training-data directory.

Usage:
  python bench/memory_probe.py --model DIR --training-data-dir DATA

Prints one JSON object: resident set size (MB) after importing torch/transformers,
after loading the model, after `load_corpus`, and after `amygdala.capture.tokenize`
over every text at once (what `capture_texts` does before its first batch). Then, in
the same process, the same texts tokenized 1,024 at a time and kept as compact arrays
(4 bytes per token id, 1 per pooling flag) instead of Python lists: the change this
benchmark proposes for `capture.tokenize`. Each stage runs in a fresh process.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
from array import array


def rss_mb() -> float:
    """Current resident set size (Linux /proc), in MB."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--training-data-dir", required=True)
    parser.add_argument("--stage", choices=["current", "chunked"], default="current")
    args = parser.parse_args()

    out: dict[str, float] = {"start": rss_mb()}
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from amygdala.capture import tokenize
    from amygdala.corpus import load_corpus
    from amygdala.models import load_model

    out["imports"] = rss_mb()
    lm = load_model(args.model, device="cpu")
    out["model"] = rss_mb()
    texts = list(load_corpus(args.training_data_dir).texts)
    gc.collect()
    out["corpus"] = rss_mb()
    if args.stage == "current":
        toks = tokenize(lm.tokenizer, texts, max_length=512)
        out["tokenized"] = rss_mb()
        out["tokens"] = sum(len(t.ids) for t in toks)
    else:
        compact = []
        for start in range(0, len(texts), 1024):
            for t in tokenize(lm.tokenizer, texts[start : start + 1024], max_length=512):
                compact.append((array("i", t.ids), bytes(t.keep), t.truncated))
        out["tokenized"] = rss_mb()
        out["tokens"] = sum(len(c[0]) for c in compact)
    out["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
