"""`amygdala serve` as a real subprocess on a free port, spoken to with a real HTTP client.

The reference for every streamed readout is the offline readout API
(`amygdala.readout.readout_ids`) run in this process on the same token ids: one full
forward pass without a KV cache, against the server's cached, incremental decoding.
A generated token's readout is the residual at the sampler's query position (the
position whose logits sampled it): token k's is `readout_ids(prompt + generated[:k])`
at its last position.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from _serving import random_artifact, running_servers, sse_chunks
from amygdala.artifact import load_artifact
from amygdala.models import load_model
from amygdala.readout import readout_ids
from amygdala.serve.engine import (
    Engine,
    GenerationRequest,
    PromptEvent,
    SamplingParams,
    TokenEvent,
)
from amygdala.serve.protocol import FALLBACK_CHAT_TEMPLATE

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONCEPTS = ["warmth", "fear", "joy", "calm", "anger"]
LAYERS = [0, 2, 3]
TOL = {"rtol": 1e-4, "atol": 1e-5}
GREEDY = {"temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def model_dir(tiny_model_dirs: Callable[[str], Path]) -> Path:
    return tiny_model_dirs("llama")


@pytest.fixture(scope="module")
def vectors(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve-artifact") / "readout.safetensors"
    return random_artifact(model_dir, out, LAYERS, CONCEPTS, combined=True)


@pytest.fixture(scope="module")
def servers(
    model_dir: Path, vectors: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Two servers started side by side: with vectors and a key, and bare and open."""
    logs = tmp_path_factory.mktemp("serve-logs")
    with running_servers(
        (
            ["--model", str(model_dir), "--vectors", str(vectors), "--max-concurrency", "3"],
            logs / "keyed.log",
            {"AMYGDALA_API_KEY": KEY},
        ),
        (["--model", str(model_dir)], logs / "open.log", {"AMYGDALA_API_KEY": ""}),
    ) as (keyed, bare):
        yield {"keyed": keyed, "open": bare}


@pytest.fixture(scope="module")
def url(servers: dict[str, str]) -> str:
    return servers["keyed"]


@pytest.fixture(scope="module")
def lm(model_dir: Path) -> Any:
    return load_model(str(model_dir), device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def artifact(vectors: Path) -> Any:
    return load_artifact(vectors)


def stream(url: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream(
        "POST", f"{url}{path}", json={**body, "stream": True}, headers=AUTH, timeout=60
    ) as resp:
        assert resp.status_code == 200, resp.read()
        return list(sse_chunks(resp))  # type: ignore[arg-type]


def token_choices(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for ch in chunks for c in ch["choices"] if "token_id" in c]


def assert_offline_parity(
    lm: Any, artifact: Any, prompt_ids: list[int], choices: list[dict[str, Any]]
) -> None:
    """Streamed readouts == offline readout at the sampler's query positions: token k's
    is position `len(prompt_ids) - 1 + k` of prompt + generated ids (causal: the same as
    the last position of prompt + generated[:k])."""
    gen = [c["token_id"] for c in choices]
    ref = readout_ids(lm, artifact, prompt_ids + gen[:-1])
    got_raw = torch.tensor([c["readout"] for c in choices])
    got_z = torch.tensor([c["readout_z"] for c in choices])
    assert got_raw.shape == (len(gen), len(LAYERS), len(CONCEPTS))
    assert ref.raw.shape[0] == len(prompt_ids) + len(gen) - 1
    torch.testing.assert_close(got_raw, ref.raw[len(prompt_ids) - 1 :], **TOL)
    assert ref.z is not None
    torch.testing.assert_close(got_z, ref.z[len(prompt_ids) - 1 :], **TOL)
    assert_combined(
        artifact, [c["readout"] for c in choices], [c["readout_combined"] for c in choices]
    )
    assert ref.combined is not None
    got_combined = torch.tensor([c["readout_combined"] for c in choices])
    torch.testing.assert_close(got_combined, ref.combined[len(prompt_ids) - 1 :], **TOL)


def assert_combined(artifact: Any, raw: Any, combined: Any) -> None:
    """`readout_combined` == Σ_l weights[l] · readout[l] with the manifest's weights (numpy)."""
    weights = np.array(artifact.manifest["combined"]["weights"], dtype=np.float64)
    raw = np.asarray(raw, dtype=np.float64)
    want = (raw * weights).sum(axis=-2)
    np.testing.assert_allclose(np.asarray(combined), want, rtol=1e-5, atol=1e-6)


# ---- models, manifest, auth ----------------------------------------------------------


def test_auth_missing_or_wrong_key_is_401(url: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        for method, path in (
            ("GET", "/v1/models"),
            ("GET", "/v1/readout/manifest"),
            ("POST", "/v1/completions"),
            ("POST", "/v1/chat/completions"),
        ):
            resp = httpx.request(
                method, f"{url}{path}", headers=headers, json={"prompt": "hi"}, timeout=30
            )
            assert resp.status_code == 401, (headers, path)
            assert resp.json()["error"]["code"] == "invalid_api_key"


def test_models_and_manifest(url: str, model_dir: Path, vectors: Path) -> None:
    models = httpx.get(f"{url}/v1/models", headers=AUTH, timeout=30).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == [str(model_dir)]
    manifest = httpx.get(f"{url}/v1/readout/manifest", headers=AUTH, timeout=30)
    assert manifest.status_code == 200
    assert manifest.json() == json.loads(vectors.with_suffix(".json").read_text())
    assert manifest.json()["calibration"]["mean"]


def test_open_server_without_vectors(servers: dict[str, str]) -> None:
    url = servers["open"]
    resp = httpx.get(f"{url}/v1/readout/manifest", timeout=30)
    assert resp.status_code == 404
    assert "without --vectors" in resp.json()["error"]["message"]
    out = httpx.post(
        f"{url}/v1/completions", json={"prompt": "The fox", "max_tokens": 3, **GREEDY}, timeout=60
    ).json()
    choice = out["choices"][0]
    assert len(choice["token_ids"]) == 3 and "readout" not in choice
    assert "readout_combined" not in choice
    chunks = list(_open_stream(url))
    assert len(token_choices(chunks)) == 3
    assert all("readout" not in c and "readout_combined" not in c for c in token_choices(chunks))


def _open_stream(url: str) -> Iterator[dict[str, Any]]:
    with httpx.stream(
        "POST",
        f"{url}/v1/completions",
        timeout=60,
        json={"prompt": "The fox", "max_tokens": 3, "stream": True, **GREEDY},
    ) as resp:
        yield from sse_chunks(resp)  # type: ignore[misc]


# ---- completions ---------------------------------------------------------------------


def test_streamed_completion_parity(url: str, lm: Any, artifact: Any) -> None:
    """Fixed prompt + greedy decoding: streamed readouts equal the offline readout API."""
    body = {
        "prompt": "The quick brown fox",
        "max_tokens": 12,
        "readout_prompt": True,
        "stream_options": {"include_usage": True},
        **GREEDY,
    }
    chunks = stream(url, "/v1/completions", body)
    prompt_ids = lm.tokenizer("The quick brown fox")["input_ids"]
    first = chunks[0]["choices"][0]["prompt_readout"]
    assert first["token_ids"] == prompt_ids
    ref = readout_ids(lm, artifact, prompt_ids)
    torch.testing.assert_close(torch.tensor(first["readout"]), ref.raw, **TOL)
    torch.testing.assert_close(torch.tensor(first["readout_z"]), ref.z, **TOL)
    choices = token_choices(chunks)
    assert len(choices) == 12
    # the first token was sampled at the last prompt position, in the same (prefill) pass
    assert choices[0]["readout"] == first["readout"][-1]
    assert choices[0]["readout_z"] == first["readout_z"][-1]
    assert choices[0]["readout_combined"] == first["readout_combined"][-1]
    assert_combined(artifact, first["readout"], first["readout_combined"])
    assert [c["finish_reason"] for c in choices] == [None] * 11 + ["length"]
    assert_offline_parity(lm, artifact, prompt_ids, choices)
    gen = [c["token_id"] for c in choices]
    assert "".join(c["text"] for c in choices) == lm.tokenizer.decode(gen, skip_special_tokens=True)
    assert chunks[-1]["usage"] == {
        "prompt_tokens": len(prompt_ids),
        "completion_tokens": 12,
        "total_tokens": len(prompt_ids) + 12,
    }
    # the same request unstreamed carries the same per-token list
    whole = httpx.post(f"{url}/v1/completions", json=body, headers=AUTH, timeout=60).json()
    choice = whole["choices"][0]
    assert choice["token_ids"] == gen
    assert choice["text"] == "".join(c["text"] for c in choices)
    torch.testing.assert_close(
        torch.tensor(choice["readout"]), torch.tensor([c["readout"] for c in choices])
    )
    assert len(choice["readout_z"]) == 12 and choice["prompt_readout"]["token_ids"] == prompt_ids
    assert_combined(artifact, choice["readout"], choice["readout_combined"])
    torch.testing.assert_close(
        torch.tensor(choice["readout_combined"]),
        torch.tensor([c["readout_combined"] for c in choices]),
    )
    assert whole["object"] == "text_completion" and whole["usage"]["completion_tokens"] == 12


def test_prompt_as_token_ids(url: str, lm: Any) -> None:
    ids = lm.tokenizer("Fear crept in")["input_ids"]
    by_text = httpx.post(
        f"{url}/v1/completions",
        headers=AUTH,
        timeout=60,
        json={"prompt": "Fear crept in", "max_tokens": 5, **GREEDY},
    ).json()
    by_ids = httpx.post(
        f"{url}/v1/completions",
        headers=AUTH,
        timeout=60,
        json={"prompt": ids, "max_tokens": 5, **GREEDY},
    ).json()
    assert by_ids["choices"][0]["token_ids"] == by_text["choices"][0]["token_ids"]
    assert by_ids["choices"][0]["readout"] == by_text["choices"][0]["readout"]


def test_stop_string_cuts_text(url: str) -> None:
    body = {"prompt": "The quick brown fox", "max_tokens": 12, **GREEDY}
    full = httpx.post(f"{url}/v1/completions", headers=AUTH, json=body, timeout=60).json()
    text = full["choices"][0]["text"]
    stop = next(text[i : i + 2] for i in range(2, len(text) - 1) if "\ufffd" not in text[i : i + 2])
    expected = text[: text.find(stop)]
    cut = httpx.post(
        f"{url}/v1/completions", headers=AUTH, json={**body, "stop": [stop]}, timeout=60
    ).json()["choices"][0]
    assert cut["text"] == expected and cut["finish_reason"] == "stop"
    chunks = stream(url, "/v1/completions", {**body, "stop": stop})
    choices = token_choices(chunks)
    assert "".join(c["text"] for c in choices) == expected
    assert choices[-1]["finish_reason"] == "stop" and len(choices[-1]["readout"]) == len(LAYERS)


def test_seeded_sampling_and_n(url: str) -> None:
    body = {
        "prompt": "I was so happy",
        "max_tokens": 8,
        "temperature": 1.0,
        "top_p": 0.9,
        "seed": 7,
        "n": 2,
        "ignore_eos": True,
    }
    a = httpx.post(f"{url}/v1/completions", headers=AUTH, json=body, timeout=60).json()
    b = httpx.post(f"{url}/v1/completions", headers=AUTH, json=body, timeout=60).json()
    assert [c["index"] for c in a["choices"]] == [0, 1]
    assert [c["token_ids"] for c in a["choices"]] == [c["token_ids"] for c in b["choices"]]
    chunks = stream(url, "/v1/completions", body)
    by_index = {
        i: [c["token_id"] for c in token_choices(chunks) if c["index"] == i] for i in (0, 1)
    }
    assert [by_index[0], by_index[1]] == [c["token_ids"] for c in a["choices"]]


# ---- chat ----------------------------------------------------------------------------


def test_chat_stream_and_whole(url: str, lm: Any, artifact: Any) -> None:
    messages = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "How are you?"},
    ]
    body = {"messages": messages, "max_tokens": 6, "readout_prompt": True, **GREEDY}
    chunks = stream(url, "/v1/chat/completions", body)
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    head = chunks[0]["choices"][0]
    assert head["delta"]["role"] == "assistant"
    text = lm.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, chat_template=FALLBACK_CHAT_TEMPLATE
    )
    prompt_ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert head["prompt_readout"]["token_ids"] == prompt_ids
    choices = token_choices(chunks)
    assert len(choices) == 6
    assert_offline_parity(lm, artifact, prompt_ids, choices)
    whole = httpx.post(f"{url}/v1/chat/completions", headers=AUTH, json=body, timeout=60).json()
    assert whole["object"] == "chat.completion"
    msg = whole["choices"][0]["message"]
    assert msg["role"] == "assistant"
    assert msg["content"] == "".join(c["delta"].get("content", "") for c in choices)
    assert whole["choices"][0]["token_ids"] == [c["token_id"] for c in choices]


# ---- concurrency and disconnects -----------------------------------------------------


def test_two_concurrent_streams_get_their_own_readouts(url: str, lm: Any, artifact: Any) -> None:
    prompts = ["The quick brown fox", "Tears ran down her face when the letter"]
    results: dict[int, list[dict[str, Any]]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(prompts))

    def go(i: int) -> None:
        try:
            start.wait(timeout=30)
            results[i] = stream(
                url, "/v1/completions", {"prompt": prompts[i], "max_tokens": 24, **GREEDY}
            )
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    for i, prompt in enumerate(prompts):
        choices = token_choices(results[i])
        assert len(choices) == 24
        assert_offline_parity(lm, artifact, lm.tokenizer(prompt)["input_ids"], choices)


def _health(url: str) -> dict[str, int]:
    return httpx.get(f"{url}/health", timeout=30).json()  # type: ignore[no-any-return]


def _wait_until_idle(url: str, before: dict[str, int]) -> dict[str, int]:
    """/health once a cancellation was counted and nothing runs (up to a minute)."""
    for _ in range(600):  # the server notices on its next write or receive
        now = _health(url)
        if now["cancelled"] > before["cancelled"] and now["active"] == now["waiting"] == 0:
            return now
        threading.Event().wait(0.1)
    return now


def test_client_disconnect_frees_its_slot(url: str, lm: Any, artifact: Any) -> None:
    before = _health(url)
    with httpx.stream(
        "POST",
        f"{url}/v1/completions",
        headers=AUTH,
        timeout=60,
        json={"prompt": "We debugged", "max_tokens": 240, "stream": True, **GREEDY},
    ) as resp:
        got = 0
        for line in resp.iter_lines():
            got += line.startswith("data: ")
            if got == 3:
                break  # leave mid-stream: closing the response drops the connection
    now = _wait_until_idle(url, before)
    assert now["cancelled"] == before["cancelled"] + 1
    assert now["active"] == 0 and now["waiting"] == 0
    # and the server keeps serving others, with correct readouts
    chunks = stream(url, "/v1/completions", {"prompt": "We debugged", "max_tokens": 5, **GREEDY})
    assert_offline_parity(
        lm, artifact, lm.tokenizer("We debugged")["input_ids"], token_choices(chunks)
    )


def test_client_leaving_a_non_streamed_request_cancels_it(url: str) -> None:
    before = _health(url)
    # 4 choices x 240 tokens: far longer than the client waits (0.2 s without a byte)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{url}/v1/completions",
            headers=AUTH,
            timeout=httpx.Timeout(30, read=0.2),
            json={"prompt": "We debugged", "max_tokens": 240, "n": 4, **GREEDY},
        )
    now = _wait_until_idle(url, before)
    assert now["cancelled"] > before["cancelled"]
    assert now["active"] == 0 and now["waiting"] == 0


# ---- bad requests --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"max_tokens": 3}, 400, "'prompt'"),
        ({"prompt": "x", "n": 20}, 400, "'n'"),
        ({"prompt": "x", "logprobs": 2}, 400, "not supported"),
        ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ({"prompt": "x", "temperature": "hot"}, 400, "temperature"),
        ({"prompt": "x", "model": "gpt-4"}, 404, "not served here"),
        ({"prompt": "fox " * 300}, 400, "positions"),
        ({"prompt": [1, 99999]}, 400, "token ids"),
    ],
)
def test_bad_requests_get_openai_errors(
    url: str, body: dict[str, Any], status: int, words: str
) -> None:
    resp = httpx.post(f"{url}/v1/completions", headers=AUTH, json=body, timeout=60)
    assert resp.status_code == status
    assert words in resp.json()["error"]["message"]


def test_body_not_json_and_bad_messages(url: str) -> None:
    resp = httpx.post(
        f"{url}/v1/completions",
        headers={**AUTH, "Content-Type": "application/json"},
        content=b"{nope",
        timeout=30,
    )
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]["message"]
    resp = httpx.post(
        f"{url}/v1/chat/completions",
        headers=AUTH,
        json={"messages": [{"content": "no role"}]},
        timeout=30,
    )
    assert resp.status_code == 400 and "role" in resp.json()["error"]["message"]


# ---- the engine in-process, on every decoder architecture ----------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gpt2", "qwen3_5"])
def test_engine_kv_cache_parity_across_architectures(
    arch: str, tiny_model_dirs: Callable[[str], Path], tmp_path: Path
) -> None:
    """KV-cache decoding with readouts == the offline readout, and no hook is left behind."""
    directory = tiny_model_dirs(arch)
    model = load_model(str(directory), device="cpu", dtype="fp32")
    art = load_artifact(
        random_artifact(directory, tmp_path / "r.safetensors", [1, 3], CONCEPTS, seed=1)
    )
    engine = Engine(model, art)
    prompt = tuple(model.tokenizer("Why does the sky")["input_ids"])
    request = GenerationRequest(
        prompt, SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    )
    engine.start()
    try:
        events = list(engine.generate(request))
    finally:
        engine.close()
    assert not any(m._forward_hooks for m in model.model.modules())
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert len(tokens) == 10 and tokens[-1].finish_reason == "length"
    # token k's readout is at position len(prompt) - 1 + k, the one whose logits sampled it
    ref = readout_ids(model, art, list(prompt) + [e.token_id for e in tokens[:-1]])
    streamed = torch.from_numpy(np.stack([e.raw for e in tokens]))
    torch.testing.assert_close(streamed, ref.raw[len(prompt) - 1 :], **TOL)
    assert ref.z is not None
    torch.testing.assert_close(
        torch.from_numpy(np.stack([e.z for e in tokens])), ref.z[len(prompt) - 1 :], **TOL
    )
    # the same steps on the calling thread give the same tokens and values, hooks off after
    steps: list[int] = []
    (events_here,) = engine.run_here([request], on_step=lambda i, cpu, wall: steps.append(i))
    here = [e for e in events_here if isinstance(e, TokenEvent)]
    assert steps == [0] * 10  # prefill and 9 decode steps: no extra pass for the last token
    assert [e.token_id for e in here] == [e.token_id for e in tokens]
    np.testing.assert_array_equal(np.stack([e.raw for e in here]), streamed.numpy())
    assert not any(m._forward_hooks for m in model.model.modules())


def test_engine_readout_is_at_the_sampler_query_position(lm: Any, artifact: Any) -> None:
    """The contract shared with the vLLM plugin: token k's readout is the residual at the
    position whose logits sampled it, i.e. `readout_ids(prompt + generated[:k])` at its
    last position (k = 0: the last prompt position), from the pass that sampled it; so a
    sequence of m tokens takes m forward passes (prefill + m - 1 decode steps), one per
    step, with readout on, with prompt readouts, and with readout off alike."""
    m = 7
    engine = Engine(lm, artifact)
    prompt = tuple(lm.tokenizer("Tears ran down her face")["input_ids"])
    params = SamplingParams(max_tokens=m, temperature=0, ignore_eos=True)
    requests = [
        GenerationRequest(prompt, params),
        GenerationRequest(prompt, params, readout_prompt=True),
        GenerationRequest(prompt, params, readout=False),
    ]
    calls = [0]
    per_step: list[tuple[int, int]] = []  # (request, model calls the step made)

    def count(_module: Any, _args: Any) -> None:
        calls[0] += 1  # a pre-hook: counts passes that stop early too

    def on_step(i: int, _cpu: float, _wall: float) -> None:
        per_step.append((i, calls[0]))
        calls[0] = 0

    handle = lm.model.register_forward_pre_hook(count)
    try:
        events = engine.run_here(requests, on_step=on_step)
    finally:
        handle.remove()
    assert per_step == [(i, 1) for _ in range(m) for i in range(len(requests))]

    tokens = [[e for e in ev if isinstance(e, TokenEvent)] for ev in events]
    gen = [e.token_id for e in tokens[0]]
    assert all([e.token_id for e in t] == gen for t in tokens) and len(gen) == m
    assert tokens[0][-1].finish_reason == "length"
    for k in range(m):  # k = 0 (the last prompt position) through the final token
        ref = readout_ids(lm, artifact, list(prompt) + gen[:k])
        assert ref.z is not None
        for seq in tokens[:2]:
            got = seq[k]
            assert got.raw is not None and got.z is not None
            torch.testing.assert_close(torch.from_numpy(got.raw), ref.raw[-1], **TOL)
            torch.testing.assert_close(torch.from_numpy(got.z), ref.z[-1], **TOL)
    assert all(e.raw is None and e.z is None for e in tokens[2])
    # prompt readouts stay each prompt position's own; the last is token 0's readout
    (prompt_event,) = [e for e in events[1] if not isinstance(e, TokenEvent)]
    assert isinstance(prompt_event, PromptEvent) and events[1][0] is prompt_event
    ref = readout_ids(lm, artifact, list(prompt))
    torch.testing.assert_close(torch.from_numpy(prompt_event.raw), ref.raw, **TOL)
    np.testing.assert_array_equal(prompt_event.raw[-1], tokens[1][0].raw)
    assert not any(mod._forward_hooks or mod._forward_pre_hooks for mod in lm.model.modules())


# ---- the command line refuses what cannot work, before serving -------------------------


def test_serve_cli_errors(
    model_dir: Path,
    vectors: Path,
    minilm_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from amygdala.cli import main

    assert main(["serve", "--model", str(minilm_dir), "--device", "cpu"]) == 2
    assert "is an encoder; serving needs a decoder LM" in capsys.readouterr().err
    assert main(["serve", "--model", str(model_dir), "--manifest", "m.json"]) == 2
    assert "--manifest needs --vectors" in capsys.readouterr().err
    wide = random_artifact(model_dir, tmp_path / "w.safetensors", [1], CONCEPTS, hidden=32)
    assert main(["serve", "--model", str(model_dir), "--vectors", str(wide)]) == 2
    assert "hidden size 32" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        args = ["serve", "--model", str(model_dir), "--vectors", str(vectors), "--port", str(port)]
        assert main(args) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
