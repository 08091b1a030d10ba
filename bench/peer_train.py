"""Train every concept with a peer library, one concept at a time (runs in the peer's venv).

Usage (the harness runs this with bench/.venvs/<peer>/bin/python):
  python bench/peer_train.py --peer repeng --model DIR --pairs pairs.json \\
      --target-layers 1,2,3 --batch-size 16 --output out/repeng.safetensors

`pairs.json` is `{"concept": [[positive, negative], …], …}`. Both peers take contrast
pairs and train one concept per call, so this loops over the concepts:

* repeng: `ControlVector.train(model, tokenizer, [DatasetEntry(pos, neg)…],
  hidden_layers=…, batch_size=…)` with its default `method="pca_diff"` (it has no
  difference-of-means method); it reads the last non-padding token of
  `output_hidden_states` after a full forward pass.
* steering-vectors: `train_steering_vector(model, tokenizer, pairs, layers=…,
  batch_size=…, read_token_index=-1)` with its default `mean_aggregator()` (difference
  of means); it records whole `[batch, seq, hidden]` block outputs with hooks during a
  full forward pass and reads the last token.

This file imports only torch, transformers and the peer (amygdala is not installed in
the peer's venv). Output: `layer_<i>.vectors` `[n_concepts, hidden]` unit rows plus a
JSON with `concepts`, so the harness can compare it with amygdala's artifact.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def load(model_dir: str) -> tuple[torch.nn.Module, object]:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in config.architectures or [])
    model = (AutoModelForCausalLM if causal else AutoModel).from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def train_repeng(
    model: torch.nn.Module,
    tokenizer: object,
    pairs: list[list[str]],
    layers: list[int],
    batch_size: int,
) -> dict[int, torch.Tensor]:
    from repeng import ControlVector, DatasetEntry

    dataset = [DatasetEntry(positive=p, negative=n) for p, n in pairs]
    vector = ControlVector.train(
        model, tokenizer, dataset, hidden_layers=layers, batch_size=batch_size
    )
    return {layer: torch.from_numpy(d) for layer, d in vector.directions.items()}


def train_sv(
    model: torch.nn.Module,
    tokenizer: object,
    pairs: list[list[str]],
    layers: list[int],
    batch_size: int,
) -> dict[int, torch.Tensor]:
    from steering_vectors import train_steering_vector

    vector = train_steering_vector(
        model,
        tokenizer,
        [(p, n) for p, n in pairs],
        layers=layers,
        batch_size=batch_size,
        read_token_index=-1,
    )
    return dict(vector.layer_activations)


PEERS = {"repeng": train_repeng, "steering-vectors": train_sv}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", choices=sorted(PEERS), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--target-layers", required=True)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument(
        "--every",
        type=int,
        default=1,
        help="train only every Nth concept (the harness extrapolates the loop: "
        "each concept is a separate call, so the cost is additive)",
    )
    args = parser.parse_args()

    start = time.perf_counter()
    layers = [int(x) for x in args.target_layers.split(",")]
    all_pairs: dict[str, list[list[str]]] = json.loads(args.pairs.read_text(encoding="utf-8"))
    data = dict(list(all_pairs.items())[:: max(args.every, 1)])
    model, tokenizer = load(args.model)
    loop_start = time.perf_counter()
    concepts, rows = [], []
    for concept, pairs in data.items():  # one call per concept: neither peer does several
        directions = PEERS[args.peer](model, tokenizer, pairs, layers, args.batch_size)
        rows.append(torch.stack([directions[layer].float().cpu() for layer in layers]))
        concepts.append(concept)
    loop_s = time.perf_counter() - loop_start

    from safetensors.torch import save_file

    stacked = torch.stack(rows, dim=1)  # [n_layers, n_concepts, hidden]
    stacked = stacked / stacked.norm(dim=-1, keepdim=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {f"layer_{layer}.vectors": stacked[i].contiguous() for i, layer in enumerate(layers)},
        str(args.output),
    )
    args.output.with_suffix(".json").write_text(
        json.dumps(
            {
                "concepts": concepts,
                "layers": layers,
                "setup_s": loop_start - start,
                "loop_s": loop_s,
                "texts_forwarded": 2 * sum(len(p) for p in data.values()),
                "concepts_total": len(all_pairs),
                "texts_total": 2 * sum(len(p) for p in all_pairs.values()),
            }
        )
    )


if __name__ == "__main__":
    main()
