"""The capture engine against Hugging Face's own `output_hidden_states=True`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from amygdala.capture import capture, capture_texts, length_batches, pool
from amygdala.models import LoadedModel, load_model
from tests.conftest import DECODER_ARCHS, TINY_ARCHS

TEXTS = [
    "I was so happy to see my friend again.",
    "Fear crept in.",
    "She sat quietly by the window, calm and content, watching the rain fall on the roof.",
    "Why?",
    "He slammed the door, furious that nobody had listened to him at all that day.",
    "Tears ran down her face.",
]


@dataclass(frozen=True)
class Reference:
    """Hugging Face's own forward of one unpadded text: `output_hidden_states`, the last
    block's own output, and which positions are real (non-special) tokens."""

    hidden_states: tuple[torch.Tensor, ...]  # [T, hidden] each, embeddings first
    last_block: torch.Tensor  # [T, hidden]
    keep: torch.Tensor  # [T] bool
    decoder: bool

    def pooled(self, layer: int, how: str) -> torch.Tensor:
        """Layer `layer` pooled (the last block of a decoder: its own output, since Hugging
        Face applies the final norm to that entry)."""
        last = len(self.hidden_states) - 2
        hidden = (
            self.last_block if layer == last and self.decoder else self.hidden_states[layer + 1]
        )
        rows = hidden[self.keep]
        return rows.mean(0) if how == "mean" else rows[-1]


def reference_forward(lm: LoadedModel, text: str) -> Reference:
    enc = lm.tokenizer(text, return_special_tokens_mask=True, return_tensors="pt")
    seen: dict[str, torch.Tensor] = {}
    handle = lm.blocks[lm.n_layers - 1].register_forward_hook(
        lambda _m, _a, out: seen.__setitem__("h", out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            out = lm.model(
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                output_hidden_states=True,
            )
    finally:
        handle.remove()
    return Reference(
        tuple(h[0] for h in out.hidden_states),
        seen["h"][0],
        enc["special_tokens_mask"][0] == 0,
        lm.kind == "decoder",
    )


@pytest.fixture(scope="module")
def reference() -> Callable[[LoadedModel, str], Reference]:
    """`reference(lm, text)`: one reference forward per model and text for the whole
    module (the tests compare every text at every layer, pooling and padding side)."""
    cache: dict[tuple[str, str], Reference] = {}

    def get(lm: LoadedModel, text: str) -> Reference:
        key = (lm.model_id, text)  # a model id is one directory of fixed weights
        if key not in cache:
            cache[key] = reference_forward(lm, text)
        return cache[key]

    return get


def run_engine(lm: LoadedModel, texts: list[str], layers: list[int], **kw: object) -> torch.Tensor:
    result = torch.full((len(texts), len(layers), lm.hidden_size), float("nan"))
    for batch in capture_texts(lm, texts, layers, progress=False, **kw):  # type: ignore[arg-type]
        result[batch.index] = batch.acts.cpu()
    return result


@pytest.fixture(scope="module")
def load(tiny_model_dirs: Callable[[str], Path]) -> Callable[[str], LoadedModel]:
    cache: dict[str, LoadedModel] = {}

    def get(arch: str) -> LoadedModel:
        if arch not in cache:
            cache[arch] = load_model(str(tiny_model_dirs(arch)), device="cpu", dtype="fp32")
        return cache[arch]

    return get


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("how", ["mean", "last"])
@pytest.mark.parametrize("arch", list(TINY_ARCHS))
def test_pooled_equals_output_hidden_states(
    load: Callable[[str], LoadedModel],
    reference: Callable[[LoadedModel, str], Reference],
    arch: str,
    how: str,
    side: str,
) -> None:
    lm = load(arch)
    layers = list(range(lm.n_layers))
    got = run_engine(lm, TEXTS, layers, pooling=how, batch_size=4, padding_side=side)
    for i, text in enumerate(TEXTS):
        for j, layer in enumerate(layers):
            ref = reference(lm, text).pooled(layer, how)
            torch.testing.assert_close(
                got[i, j],
                ref,
                atol=2e-5,
                rtol=2e-4,
                msg=f"{arch} {how} {side} text {i} layer {layer}",
            )


def test_minilm_pooled_equals_output_hidden_states(
    minilm_dir: Path, reference: Callable[[LoadedModel, str], Reference]
) -> None:
    lm = load_model(str(minilm_dir), device="cpu", dtype="fp32")
    assert (lm.kind, lm.n_layers, lm.hidden_size, lm.blocks_path) == (
        "encoder",
        6,
        384,
        "encoder.layer",
    )
    layers = [0, 2, 5]
    for how in ("mean", "last"):
        for side in ("left", "right"):
            got = run_engine(lm, TEXTS, layers, pooling=how, batch_size=3, padding_side=side)
            for i, text in enumerate(TEXTS):
                for j, layer in enumerate(layers):
                    torch.testing.assert_close(
                        got[i, j], reference(lm, text).pooled(layer, how), atol=5e-5, rtol=2e-4
                    )


def test_special_tokens_and_padding_never_pooled(minilm_dir: Path) -> None:
    """`last` is the last real non-special token: for BERT that is the token before [SEP]."""
    lm = load_model(str(minilm_dir), device="cpu", dtype="fp32")
    enc = lm.tokenizer(TEXTS[1], return_tensors="pt")
    with torch.no_grad():
        hs = lm.model(**enc, output_hidden_states=True).hidden_states
    got = run_engine(lm, [TEXTS[1], TEXTS[2]], [1], pooling="last", batch_size=2)
    torch.testing.assert_close(got[0, 0], hs[2][0, -2], atol=1e-5, rtol=1e-4)
    mean = run_engine(lm, [TEXTS[1]], [1], pooling="mean")
    torch.testing.assert_close(mean[0, 0], hs[2][0, 1:-1].mean(0), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_blocks_after_deepest_target_never_run(
    load: Callable[[str], LoadedModel], arch: str
) -> None:
    lm = load(arch)
    calls: list[str] = []
    watched = {f"block {i}": lm.blocks[i] for i in range(2, lm.n_layers)}
    for name in ("norm", "ln_f", "lm_head", "pooler"):
        for mname, module in lm.model.named_modules():
            if mname.split(".")[-1] == name:
                watched[mname] = module
    assert len(watched) >= 3
    handles = [
        m.register_forward_hook(lambda *_a, n=n: calls.append(n)) for n, m in watched.items()
    ]
    try:
        run_engine(lm, TEXTS, [0, 1], batch_size=2)
    finally:
        for h in handles:
            h.remove()
    assert calls == []


def test_one_forward_row_per_text(load: Callable[[str], LoadedModel]) -> None:
    lm = load("llama")
    rows: list[int] = []
    handle = lm.blocks[0].register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    try:
        run_engine(lm, TEXTS, [1], batch_size=4)
    finally:
        handle.remove()
    assert sum(rows) == len(TEXTS)
    assert rows == [4, 2]  # --batch-size respected


def hook_snapshot(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Every forward (pre-)hook id per module (transformers installs its own, and keeps them)."""
    return {
        name: (*m._forward_hooks, *m._forward_pre_hooks)
        for name, m in model.named_modules()
        if m._forward_hooks or m._forward_pre_hooks
    }


def test_hooks_removed_after_clean_exit_and_exception(
    tiny_model_dirs: Callable[[str], Path],
) -> None:
    lm = load_model(str(tiny_model_dirs("qwen2")), device="cpu", dtype="fp32")
    assert hook_snapshot(lm.model) == {}
    foreign = lm.blocks[1].register_forward_hook(lambda *_: None)  # someone else's hook stays
    before = hook_snapshot(lm.model)
    enc = lm.tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    keep = enc["attention_mask"].bool()
    with torch.no_grad(), capture(lm.blocks, [1], keep) as out:
        lm.model(**enc)
    assert out.stacked([1]).shape == (2, 1, lm.hidden_size)
    assert hook_snapshot(lm.model) == before

    with pytest.raises(ZeroDivisionError), capture(lm.blocks, [1, 2], keep):
        1 / 0  # noqa: B018
    assert hook_snapshot(lm.model) == before
    foreign.remove()
    assert hook_snapshot(lm.model) == {}


def test_pool_ignores_nan_in_masked_positions() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [float("nan"), 0.0], [3.0, 4.0]]])
    keep = torch.tensor([[True, False, True]])
    torch.testing.assert_close(pool(hidden, keep, "mean"), torch.tensor([[2.0, 3.0]]))
    torch.testing.assert_close(pool(hidden, keep, "last"), torch.tensor([[3.0, 4.0]]))


def test_length_batches_sorted_and_complete() -> None:
    lengths = [5, 1, 9, 3, 9, 2, 7]
    batches = length_batches(lengths, 3)
    assert [len(b) for b in batches] == [3, 3, 1]
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)


@pytest.mark.parametrize("arch", DECODER_ARCHS)
def test_truncation_counted(load: Callable[[str], LoadedModel], arch: str) -> None:
    from amygdala.capture import CaptureStats

    lm = load(arch)
    stats = CaptureStats()
    long_text = "the quick brown fox " * 200
    run_engine(lm, [long_text, "short"], [0], max_length=16, stats=stats)
    assert stats.truncated == 1


@pytest.mark.parametrize("side", ["left", "right"])
def test_token_sample_picks_evenly_spread_real_tokens(
    load: Callable[[str], LoadedModel],
    reference: Callable[[LoadedModel, str], Reference],
    side: str,
) -> None:
    """The sampled single tokens equal `output_hidden_states` at the
    floor((2j+1)·n/2k)-th real token (all of them, NaN-padded, when n < k)."""
    lm = load("llama")
    k = 4
    got: dict[int, torch.Tensor] = {}
    for batch in capture_texts(
        lm, TEXTS, [1], batch_size=3, padding_side=side, sample_tokens=k, progress=False
    ):
        assert batch.tokens is not None
        for row, i in enumerate(batch.index.tolist()):
            got[i] = batch.tokens[row, 0]  # [k, hidden]
    for i, text in enumerate(TEXTS):
        ref = reference(lm, text)
        real = ref.hidden_states[2][ref.keep]
        n = real.shape[0]
        picks = [(2 * j + 1) * n // (2 * k) for j in range(k)] if n >= k else list(range(n))
        torch.testing.assert_close(got[i][: len(picks)], real[picks], atol=2e-5, rtol=2e-4)
        assert torch.isnan(got[i][len(picks) :]).all()


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_tokenize_in_chunks_equals_the_tokenizer(
    load: Callable[[str], LoadedModel], arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunking (here 4 texts a call) changes nothing: ids, pooling flags and the
    truncation flag of every text equal one-text-at-a-time tokenizer output."""
    import amygdala.capture as capture_mod

    lm = load(arch)
    monkeypatch.setattr(capture_mod, "TOKENIZE_CHUNK", 4)
    texts = [*TEXTS, "the quick brown fox " * 40, "", *TEXTS[::-1], "x"]
    toks = capture_mod.tokenize(lm.tokenizer, texts, max_length=24)
    assert len(toks) == len(texts)
    special = set(lm.tokenizer.all_special_ids)
    for text, tok in zip(texts, toks, strict=True):
        ref = lm.tokenizer(text, truncation=True, max_length=24)["input_ids"]
        assert list(tok.ids) == ref
        assert [bool(k) for k in tok.keep] == [i not in special for i in ref]
        assert tok.truncated == (len(lm.tokenizer(text)["input_ids"]) > 24)
