"""The vLLM plugin's parts that run without vLLM: settings and fit checks, the side
channel over real ZeroMQ sockets, the rows a worker sends, the inbox that pairs rows with
tokens, the custom op under torch.compile, and the response rewriting.

The plugin inside a real vLLM server is tested in test_vllm_server.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from amygdala.errors import ArtifactError, ConfigError
from amygdala.serve.protocol import dumps
from amygdala.vllm_plugin import _vllm, register
from amygdala.vllm_plugin.channel import Batch, Entry, Publisher, Receiver, decode, encode
from amygdala.vllm_plugin.inbox import Inbox
from amygdala.vllm_plugin.settings import (
    ReadoutSettings,
    ServedModel,
    check_fit,
    check_vllm_version,
    plugins_allow_endpoint,
)
from amygdala.vllm_plugin.stream import CombinedScores, Rewriter, ZScores
from amygdala.vllm_plugin.tap import Mark, ReadoutTap, StepLayout, plan_rows

MANIFEST = {"concepts": ["a", "b", "c"], "layers": [1, 3], "hidden_size": 16, "dtype": "float32"}
MODEL = ServedModel(name="tiny", hidden_size=16, n_layers=4)


# ---- settings ------------------------------------------------------------------------


def test_settings_need_both_variables_or_neither() -> None:
    assert ReadoutSettings.from_env({}) is None
    both = ReadoutSettings.from_env(
        {"VLLM_READOUT_VECTORS": "o/r.safetensors", "VLLM_READOUT_MANIFEST": "o/r.json"}
    )
    assert both is not None and both.vectors.name == "r.safetensors"
    with pytest.raises(ConfigError, match="VLLM_READOUT_MANIFEST is not"):
        ReadoutSettings.from_env({"VLLM_READOUT_VECTORS": "o/r.safetensors"})
    with pytest.raises(ConfigError, match="VLLM_READOUT_VECTORS is not"):
        ReadoutSettings.from_env({"VLLM_READOUT_MANIFEST": "o/r.json"})


def test_register_is_inert_without_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_READOUT_VECTORS", raising=False)
    monkeypatch.delenv("VLLM_READOUT_MANIFEST", raising=False)
    before = set(sys.modules)
    register()
    register()  # idempotent
    assert not [m for m in set(sys.modules) - before if m.startswith(("vllm", "torch"))]


def test_register_refuses_half_a_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_READOUT_VECTORS", "out/readout.safetensors")
    monkeypatch.delenv("VLLM_READOUT_MANIFEST", raising=False)
    with pytest.raises(SystemExit, match="amygdala readout: VLLM_READOUT_VECTORS is set"):
        register()


def test_endpoint_needs_vllm_plugins_to_name_amygdala() -> None:
    assert plugins_allow_endpoint({"VLLM_PLUGINS": "amygdala"})
    assert plugins_allow_endpoint({"VLLM_PLUGINS": "other, amygdala"})
    assert not plugins_allow_endpoint({})
    assert not plugins_allow_endpoint({"VLLM_PLUGINS": "amygdala_x"})


def test_version_check() -> None:
    assert check_vllm_version("0.32.0") is None
    assert check_vllm_version("0.32.3.dev1+cpu") is None
    with pytest.raises(ConfigError, match=r"vLLM 0\.31\.2 is not .*\(supported: 0\.32\.x\)"):
        check_vllm_version("0.31.2", {})
    warning = check_vllm_version("0.33.0", {"AMYGDALA_VLLM_ALLOW_UNTESTED": "1"})
    assert warning is not None and "continuing" in warning


@pytest.mark.parametrize(
    ("manifest", "model", "message"),
    [
        ({**MANIFEST, "hidden_size": 8}, MODEL, "hidden size 8, but tiny has 16"),
        ({**MANIFEST, "layers": [1, 4]}, MODEL, r"4 decoder layers \(0\.\.3\); layers \[4\]"),
        (MANIFEST, ServedModel("tiny", 16, 4, pipeline_parallel=2), "pipeline-parallel"),
        (MANIFEST, ServedModel("tiny", 16, 4, speculative=True), "speculative"),
        (MANIFEST, ServedModel("tiny", 16, 4, model_runner_v2=True), "V1 model runner"),
    ],
)
def test_fit_check_refuses_with_one_line(
    manifest: dict[str, Any], model: ServedModel, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        check_fit(manifest, model)
    check_fit(MANIFEST, ServedModel("tiny", 16, 4, tensor_parallel=2))


# ---- engine request ids ----------------------------------------------------------------


def test_choice_matcher_follows_vllm_request_ids() -> None:
    one = _vllm.choice_matcher("completion", "abc", 1)
    assert one("cmpl-abc-0-1a2b3c4d") == 0
    assert one("cmpl-abc-2-1a2b3c4d") == 2  # third prompt of a prompt list
    assert one("cmpl-abd-0-1a2b3c4d") is None
    assert one("cmpl-abc-0") is None
    two = _vllm.choice_matcher("completion", "abc", 2)
    assert two("1_cmpl-abc-0-1a2b3c4d") == 1
    assert two("0_cmpl-abc-1-1a2b3c4d") == 2  # prompt 1, child 0: index 1 * n + 0
    assert two("cmpl-abc-0-1a2b3c4d") is None
    chat = _vllm.choice_matcher("chat", "x_1", 1)
    assert chat("chatcmpl-x_1-0f0f0f0f") == 0
    assert chat("chatcmpl-x_1_1-0f0f0f0f") == 1
    assert chat("cmpl-x_1-0-0f0f0f0f") is None


def test_marks_come_from_extra_args() -> None:
    class Params:
        def __init__(self, extra: dict[str, Any] | None) -> None:
            self.extra_args = extra

    mark = _vllm.mark_of(Params({"amygdala_key": "k", "amygdala_pid": 7, "amygdala_prompt": 1}))
    assert mark == Mark("k", 7, True)
    assert _vllm.mark_of(Params(None)) is None
    assert _vllm.mark_of(Params({"amygdala_key": "k"})) is None
    assert _vllm.mark_of(Params({"amygdala_key": "k", "amygdala_pid": True})) is None


# ---- rows a worker sends -----------------------------------------------------------------


def test_plan_rows_sends_the_sampler_row_or_every_prompt_row() -> None:
    layout = StepLayout(
        request_ids=["r0", "r1", "r2", "r3"],
        query_start=np.array([0, 5, 6, 9, 12]),  # r0: 5 rows, r1: 1, r2: 3, r3: 3
        marks=[Mark("k0", 10, False), None, Mark("k2", 20, True), Mark("k3", 10, False)],
        prompt_lens=[7, 4, 3, 20],
        positions=torch.arange(12),
    )
    rows, by_pid = plan_rows(layout)
    assert by_pid == {
        10: [Entry("k0", "r0", 7, 1), Entry("k3", "r3", 20, 1)],
        20: [Entry("k2", "r2", 3, 3)],
    }
    assert rows == [4, 11, 6, 7, 8]  # grouped by pid, in entry order


# ---- the side channel ----------------------------------------------------------------------


def test_encode_decode_round_trip_and_malformed_messages() -> None:
    entries = [Entry("k", "req-1", 5, 2), Entry("k", "req-2", 3, 1)]
    positions = np.array([4, 5, 2])
    values = np.arange(3 * 2 * 3, dtype=np.float32).reshape(3, 2, 3)
    batch = decode(encode(entries, positions, values), (2, 3))
    assert batch.entries == tuple(entries)
    np.testing.assert_array_equal(batch.values, values)
    parts = batch.split()
    assert [p[1].tolist() for p in parts] == [[4, 5], [2]]
    frames = encode(entries, positions, values)
    with pytest.raises(ValueError, match="expected 3 frames"):
        decode(frames[:2], (2, 3))
    with pytest.raises(ValueError, match="shape"):
        decode(frames, (2, 4))
    with pytest.raises(ValueError, match="not JSON"):
        decode([b"{", frames[1], frames[2]], (2, 3))
    with pytest.raises(ValueError, match="3 rows announced"):
        decode([frames[0], frames[1][:8], frames[2]], (2, 3))


def test_publisher_reaches_the_receiver_over_ipc(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's PUSH socket connects before the API server binds; nothing is lost."""
    session = uuid.uuid4().hex[:12]
    got: list[Batch] = []
    values = np.ones((1, 2, 3), dtype=np.float32)

    async def main() -> None:
        publisher = Publisher(session)
        for i in range(3):  # queued on the connect side before anyone listens
            publisher.send(os.getpid(), encode([Entry("k", f"r{i}", 1, 1)], np.array([i]), values))
        receiver = Receiver(session, (2, 3), got.append)
        receiver.start()
        for _ in range(200):
            if len(got) == 3:
                break
            await asyncio.sleep(0.01)
        receiver.close()
        publisher.close()

    asyncio.run(main())
    assert [b.entries[0].request_id for b in got] == ["r0", "r1", "r2"]
    assert [int(b.positions[0]) for b in got] == [0, 1, 2]


# ---- the inbox ---------------------------------------------------------------------------


def _batch(key: str, request_id: str, prompt_len: int, positions: list[int]) -> Batch:
    values = np.array([[[float(p)] * 2] for p in positions], dtype=np.float32)  # [n, 1, 2]
    entry = Entry(key, request_id, prompt_len, len(positions))
    return Batch((entry,), np.array(positions), values)


def test_inbox_hands_each_token_its_sampler_row() -> None:
    async def main() -> None:
        inbox = Inbox()
        sub = inbox.subscribe("k", _vllm.choice_matcher("completion", "b", 1), prompt=False)
        inbox.deliver(_batch("k", "cmpl-b-0-00000000", 6, [3]))  # chunked prefill: not yet
        inbox.deliver(_batch("k", "cmpl-b-0-00000000", 6, [5]))  # token 0 at position P-1
        first = await sub.token(0, timeout=1)
        assert first is not None and first[0, 0] == 5
        waiter = asyncio.ensure_future(sub.token(0, timeout=5))
        await asyncio.sleep(0.05)
        assert not waiter.done()  # token 1's row has not come yet
        inbox.deliver(_batch("k", "cmpl-b-0-00000000", 6, [6]))
        second = await waiter
        assert second is not None and second[0, 0] == 6
        assert await sub.token(0, timeout=0.05) is None  # never came: counted
        inbox.deliver(_batch("other", "cmpl-c-0-00000000", 6, [5]))
        inbox.deliver(_batch("k", "cmpl-zzz-0-00000000", 6, [7]))
        assert sub.foreign == 1
        sub.close()
        inbox.deliver(_batch("k", "cmpl-b-0-00000000", 6, [8]))
        stats = inbox.stats()
        assert stats["pid"] == os.getpid() and stats["served_requests"] == 1
        assert (stats["open_requests"], stats["dropped_rows"], stats["timeouts"]) == (0, 2, 1)
        assert stats["received_rows"] == 6

    asyncio.run(main())


def test_prompt_rows_merge_across_sibling_choices() -> None:
    """With n > 1 the prefix cache lets only one child compute the whole prompt."""

    async def main() -> None:
        inbox = Inbox()
        sub = inbox.subscribe("k", _vllm.choice_matcher("chat", "b", 2), prompt=True, n=2)
        inbox.deliver(_batch("k", "0_chatcmpl-b-00000000", 4, [0, 1, 2, 3]))
        inbox.deliver(_batch("k", "1_chatcmpl-b-00000000", 4, [3]))  # cache hit up to 3
        rows = await sub.prompt(1, timeout=1)
        assert rows is not None and rows[:, 0, 0].tolist() == [0, 1, 2, 3]
        token = await sub.token(1, timeout=1)  # position P-1 = 3 is also token 0's
        assert token is not None and token[0, 0] == 3

    asyncio.run(main())


def test_prompt_rows_survive_the_first_token() -> None:
    """A whole (not streamed) response reads the tokens first, then the prompt."""

    async def main() -> None:
        inbox = Inbox()
        sub = inbox.subscribe("k", _vllm.choice_matcher("completion", "b", 1), prompt=True)
        inbox.deliver(_batch("k", "cmpl-b-0-00000000", 4, [0, 1, 2, 3]))
        token = await sub.token(0, timeout=1)
        assert token is not None and token[0, 0] == 3
        rows = await sub.prompt(0, timeout=1)
        assert rows is not None and rows[:, 0, 0].tolist() == [0, 1, 2, 3]

    asyncio.run(main())


# ---- the op inside a compiled model --------------------------------------------------------


class _FusedLayer(nn.Module):
    """Returns (hidden, residual) like vLLM's fused-norm decoder layers."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 16)

    def forward(self, h: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tanh(self.lin(h)), h + r


class _PlainLayer(nn.Module):
    """Returns the residual stream itself, like GPT-2's block."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 16)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + torch.tanh(self.lin(h))


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_FusedLayer(), _FusedLayer(), _PlainLayer()])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        r = torch.zeros_like(h)
        for layer in self.layers[:2]:
            h, r = layer(h, r)
        return self.layers[2](h + r)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_op_writes_the_readout_under_torch_compile(backend: str) -> None:
    """The wrapped forward's op is part of the compiled graph and fills the buffer on
    every call, equal to h·Vᵀ computed from forward hooks (the independent reference)."""
    torch.manual_seed(0)
    model = _Toy().eval()
    vectors = [torch.nn.functional.normalize(torch.randn(3, 16), dim=-1) for _ in range(2)]
    seen: dict[int, torch.Tensor] = {}
    handles = [
        model.layers[i].register_forward_hook(
            lambda _m, _a, out, i=i: seen.__setitem__(
                i, out[0] + out[1] if isinstance(out, tuple) else out
            )
        )
        for i in (1, 2)
    ]
    tap = ReadoutTap(
        [model.layers[1], model.layers[2]],
        vectors,
        max_tokens=8,
        device=torch.device("cpu"),
        publisher=None,
    )
    tap.install()
    tap.install()  # idempotent
    compiled = torch.compile(model, backend=backend, dynamic=True)
    for n in (5, 3, 7):  # different token counts, one compiled graph
        x = torch.randn(n, 16)
        with torch.no_grad():
            compiled(x)
            got = tap.out[:, :n].clone()
            tap.out.zero_()
            model(x)  # eager, for the hooks' reference
        for slot, i in enumerate((1, 2)):
            expected = seen[i] @ vectors[slot].t()
            torch.testing.assert_close(got[slot], expected, rtol=1e-5, atol=1e-6)
    for h in handles:
        h.remove()


# ---- rewriting vLLM's responses ------------------------------------------------------------


def _rewriter(kind: str, inbox: Inbox, *, keep: bool = False, prompt: bool = False) -> Rewriter:
    sub = inbox.subscribe("k", _vllm.choice_matcher(kind, "b", 1), prompt=prompt)
    manifest = {
        "concepts": ["x", "y"],
        "layers": [2],
        "calibration": {"mean": [[1.0, 0.0]], "std": [[2.0, 0.0]]},
    }
    return Rewriter(
        kind,
        sub,
        ZScores(manifest),
        lambda ids: [f"<{i}>" for i in ids],
        prompt=prompt,
        keep_token_ids=keep,
        timeout=1,
    )


def test_multi_token_chunk_becomes_one_chunk_per_token_in_order() -> None:
    async def main() -> None:
        inbox = Inbox()
        rw = _rewriter("completion", inbox)
        inbox.deliver(_batch("k", "cmpl-b-0-00000000", 3, [2, 3, 4]))
        chunk = {
            "id": "cmpl-1",
            "usage": {"completion_tokens": 3},
            "choices": [
                {
                    "index": 0,
                    "text": "abc",
                    "logprobs": None,
                    "finish_reason": "length",
                    "token_ids": [7, 8, 9],
                    "prompt_token_ids": [1, 2, 3],
                }
            ],
        }
        out = await rw.chunk(chunk)
        assert [c["choices"][0]["token_id"] for c in out] == [7, 8, 9]
        assert [c["choices"][0]["text"] for c in out] == ["", "", "abc"]
        assert [c["choices"][0]["finish_reason"] for c in out] == [None, None, "length"]
        assert [c["choices"][0]["token"] for c in out] == ["<7>", "<8>", "<9>"]
        assert [float(c["choices"][0]["readout"][0, 0]) for c in out] == [2.0, 3.0, 4.0]
        z = out[2]["choices"][0]["readout_z"]
        assert z.tolist() == [[1.5, 0.0]]  # (4 − 1) / 2, and 0 where std is 0
        assert ["usage" in c for c in out] == [False, False, True]
        assert all("readout_combined" not in c["choices"][0] for c in out)  # no entry
        assert all("token_ids" not in c["choices"][0] for c in out)
        assert all("prompt_token_ids" not in c["choices"][0] for c in out)

    asyncio.run(main())


def test_stream_of_events_and_chat_prompt_readout() -> None:
    async def main() -> None:
        inbox = Inbox()
        rw = _rewriter("chat", inbox, keep=True, prompt=True)
        inbox.deliver(_batch("k", "chatcmpl-b-00000000", 2, [0, 1, 2]))

        async def events() -> Any:
            yield 'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}],'
            yield '"prompt_token_ids":[5,6]}\n\n: keep-alive\n\n'
            yield 'data: {"choices":[{"index":0,"delta":{"content":"hi"},"token_ids":[9,4]}]}\n\n'
            yield "data: [DONE]\n\n"

        out = [e async for e in rw.stream(events())]
        assert out[1] == ": keep-alive\n\n" and out[-1] == "data: [DONE]\n\n"
        import json

        role = json.loads(out[0][6:])
        assert role["prompt_token_ids"] == [5, 6]
        pr = role["choices"][0]["prompt_readout"]
        assert pr["token_ids"] == [5, 6] and pr["tokens"] == ["<5>", "<6>"]
        assert [r[0][0] for r in pr["readout"]] == [0.0, 1.0]
        tokens = [json.loads(e[6:])["choices"][0] for e in out[2:4]]
        assert [t["token_id"] for t in tokens] == [9, 4]
        assert [t["delta"] for t in tokens] == [{}, {"content": "hi"}]
        assert [t["readout"][0][0] for t in tokens] == [1.0, 2.0]

    asyncio.run(main())


def test_whole_response_gets_every_tokens_readout() -> None:
    async def main() -> None:
        inbox = Inbox()
        rw = _rewriter("completion", inbox)
        inbox.deliver(_batch("k", "cmpl-b-0-00000000", 2, [1, 2]))
        body = {
            "choices": [{"index": 0, "text": "ab", "token_ids": [3, 4], "prompt_token_ids": [1, 2]}]
        }
        out = await rw.response(body)
        choice = out["choices"][0]
        assert choice["token_ids"] == [3, 4] and choice["tokens"] == ["<3>", "<4>"]
        assert choice["readout"][:, 0, 0].tolist() == [1.0, 2.0]
        assert choice["readout_z"].shape == (2, 1, 2)
        assert "prompt_token_ids" not in choice

    asyncio.run(main())


# ---- the combined score ---------------------------------------------------------------------

COMBINED_MANIFEST = {
    "concepts": ["x", "y"],
    "layers": [1, 2],
    "calibration": {"mean": [[0.0, 0.0], [0.0, 0.0]], "std": [[1.0, 1.0], [1.0, 1.0]]},
    "combined": {
        "weights": [[0.5, -2.0], [1.5, 3.0]],
        "mean": [0.1, -0.2],
        "std": [2.0, 4.0],
        "unit": "token",
    },
}


def _rows(key: str, request_id: str, prompt_len: int, positions: list[int]) -> Batch:
    """Rows `[n, 2 layers, 2 concepts]` whose entries differ by layer and concept."""
    values = np.array([[[p, 2.0 * p], [1.0 - p, 0.25 * p]] for p in positions], dtype=np.float32)
    return Batch((Entry(key, request_id, prompt_len, len(positions)),), np.array(positions), values)


def _combined_rewriter(kind: str, inbox: Inbox, *, prompt: bool = False) -> Rewriter:
    sub = inbox.subscribe("k", _vllm.choice_matcher(kind, "b", 1), prompt=prompt)
    return Rewriter(
        kind,
        sub,
        ZScores(COMBINED_MANIFEST),
        lambda ids: [f"<{i}>" for i in ids],
        prompt=prompt,
        keep_token_ids=False,
        timeout=1,
        combined=CombinedScores(COMBINED_MANIFEST),
    )


def _weighted(raw: Any) -> np.ndarray:
    """Σ_l weights[l] · raw[l] in float64, from the manifest (the independent reference)."""
    weights = np.array(COMBINED_MANIFEST["combined"]["weights"])  # type: ignore[index]
    return np.einsum("...lc,lc->...c", np.asarray(raw, dtype=np.float64), weights)


def test_every_streamed_token_and_the_prompt_get_readout_combined() -> None:
    async def main() -> None:
        inbox = Inbox()
        rw = _combined_rewriter("completion", inbox, prompt=True)
        inbox.deliver(_rows("k", "cmpl-b-0-00000000", 3, [0, 1, 2, 3, 4]))
        chunk = {
            "id": "cmpl-1",
            "choices": [
                {
                    "index": 0,
                    "text": "abc",
                    "logprobs": None,
                    "finish_reason": None,
                    "token_ids": [7, 8, 9],
                    "prompt_token_ids": [1, 2, 3],
                }
            ],
        }
        out = await rw.chunk(chunk)
        choices = [c["choices"][0] for c in out]
        assert [float(c["readout"][0, 0]) for c in choices] == [2.0, 3.0, 4.0]
        for c in choices:
            assert c["readout_combined"].shape == (2,)
            np.testing.assert_allclose(c["readout_combined"], _weighted(c["readout"]), rtol=1e-6)
        prompt = choices[-1]["prompt_readout"]  # on the chunk that keeps vLLM's choice
        assert prompt["readout"].shape == (3, 2, 2)
        np.testing.assert_allclose(
            prompt["readout_combined"], _weighted(prompt["readout"]), rtol=1e-6
        )
        # on the wire: the same numbers, written as JSON lists
        wire = json.loads(dumps(out[1]))["choices"][0]
        assert wire["readout_combined"] == pytest.approx(_weighted(wire["readout"]).tolist())

    asyncio.run(main())


def test_whole_response_gets_readout_combined_per_token() -> None:
    async def main() -> None:
        inbox = Inbox()
        rw = _combined_rewriter("completion", inbox)
        inbox.deliver(_rows("k", "cmpl-b-0-00000000", 2, [1, 2, 3]))
        body = {
            "choices": [
                {"index": 0, "text": "abc", "token_ids": [3, 4, 5], "prompt_token_ids": [1, 2]}
            ]
        }
        choice = (await rw.response(body))["choices"][0]
        assert choice["readout"].shape == (3, 2, 2)
        assert choice["readout_combined"].shape == (3, 2)
        np.testing.assert_allclose(
            choice["readout_combined"], _weighted(choice["readout"]), rtol=1e-6
        )

    asyncio.run(main())


def test_combined_scores_need_a_valid_entry() -> None:
    assert CombinedScores({"concepts": ["x"], "layers": [1]})(np.ones((1, 1))) is None
    bad = {**COMBINED_MANIFEST, "combined": {"weights": [[1.0]], "mean": [0.0], "std": [1.0]}}
    with pytest.raises(ArtifactError, match=r"combined weights is \(1, 1\), expected"):
        CombinedScores(bad)
