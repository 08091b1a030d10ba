"""Hostile requests to both HTTP servers, over real HTTP to real subprocesses (issue 12).

`amygdala serve` (a tiny random Llama, 256 positions, 400-token vocabulary) and
`amygdala memory-server` run as `python -m amygdala …`; every request goes over a real
socket. The contract: no request ever gets a 500 or puts a traceback in the server's
log; a request the API does not take gets 400 with an OpenAI error body
(`{"error": {"message", "type", "param", "code"}}`) naming the field; a body over the cap
gets 413 before it is read (checked with raw sockets: the server answers while the
client is still "sending"); and a long prompt tokenizes off the event loop, so `/health`
answers while it does. The memory server speaks JSON-RPC, so its errors are JSON-RPC
error bodies. Hypothesis throws arbitrary JSON (lone surrogates, 70-bit integers, NaN,
every type in every field) and arbitrary bytes at both.

The `--port` checks of both command lines run as real subprocesses too, and the vLLM
plugin's request fields are checked at unit level (`readout_flags`, the one check both
servers use), as in test_vllm_plugin.py.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _memory_server import clean_env, memory_server
from _serving import random_artifact, running_servers
from amygdala.serve.protocol import RequestError, parse_body, readout_flags

C, CH = "/v1/completions", "/v1/chat/completions"
SMALL_CAP = 64 * 1024
ERROR_KEYS = {"message", "type", "param", "code"}
MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}

# every code point, lone surrogates included (st.text() leaves category Cs out)
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**400])
    | st.floats(allow_nan=True, allow_infinity=True)
    | ANY_TEXT
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=8,
)
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# ---- servers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tiny_model_dirs: Callable[[str], Path]) -> Path:
    return tiny_model_dirs("llama")


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile-serve-logs")


@pytest.fixture(scope="module")
def servers(
    model_dir: Path, logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """`main`: vectors, the default 4 MiB cap; `small`: no vectors, a 64 KiB cap."""
    vectors = random_artifact(
        model_dir, tmp_path_factory.mktemp("hostile-art") / "r.safetensors", [1, 3], ["a", "b"]
    )
    open_env = {"AMYGDALA_API_KEY": ""}
    with running_servers(
        (["--model", str(model_dir), "--vectors", str(vectors)], logs / "main.log", open_env),
        (["--model", str(model_dir), "--max-request-bytes", "64K"], logs / "small.log", open_env),
    ) as (main, small):
        yield {"main": main, "small": small}


@pytest.fixture(scope="module")
def url(servers: dict[str, str]) -> str:
    return servers["main"]


def assert_clean_logs(logs: Path) -> None:
    for log in logs.iterdir():
        text = log.read_text(errors="replace")
        assert "Traceback" not in text and "Exception in ASGI" not in text, text[-3000:]


def post(url: str, path: str, raw: bytes) -> httpx.Response:
    return httpx.post(
        url + path, content=raw, headers={"content-type": "application/json"}, timeout=120
    )


def openai_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    """The error object of an OpenAI error response with `status`."""
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert set(error) == ERROR_KEYS
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


def completion(**fields: Any) -> bytes:
    return json.dumps({"prompt": "hi", "max_tokens": 2, **fields}).encode()  # \ud800 → escape


def chat(content: Any, **fields: Any) -> bytes:
    message = {"role": "user", "content": content}
    return json.dumps({"messages": [message], "max_tokens": 2, **fields}).encode()


def raw_http(url: str, head: str, parts: list[bytes], timeout: float = 30) -> bytes:
    """Send a request head and body parts over a plain socket; return what comes back
    before the server closes (the request need not be complete)."""
    split = urlsplit(url)
    assert split.hostname is not None and split.port is not None
    with socket.create_connection((split.hostname, split.port), timeout=timeout) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        for part in parts:
            sock.sendall(part)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def split_response(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


# ---- serve: each hostile class gets a 400 naming the field ---------------------------

HOSTILE = [
    ("seed beyond 64 bits", C, completion(seed=2**70), "seed", "'seed' must be a 64-bit integer"),
    ("seed below -2**63", C, completion(seed=-(2**63) - 1), "seed", "64-bit integer"),
    ("lone surrogate in prompt", C, completion(prompt="a\ud800b"), "prompt",
     "'prompt' holds a lone surrogate"),
    ("lone surrogate in chat", CH, chat("x\udc00"), "messages",
     "'messages[0].content' holds a lone surrogate"),
    ("lone surrogate in a text part", CH, chat([{"type": "text", "text": "\ud800"}]),
     "messages", "'messages[0].content[0].text' holds a lone surrogate"),
    ("lone surrogate in a key", C, completion(**{"\udfff": 1}), None,
     "a key in the request body holds a lone surrogate"),
    ("nested 100,000 deep", C, b"[" * 100_000 + b"]" * 100_000, None, "nested too deeply"),
    ("nested in the prompt", C, b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
     None, "nested too deeply"),
    ("not UTF-8", C, b'{"prompt": "\xff\xfe"}', None, "not UTF-8"),
    ("5000-digit integer", C, b'{"prompt": "hi", "seed": ' + b"9" * 5000 + b"}", None,
     "4300 digits"),
    ("truncated JSON", C, b'{"prompt": "hi", ', None, "not valid JSON"),
    ("empty body", C, b"", None, "not valid JSON"),
    ("a list, not an object", C, b"[1, 2]", None, "must be a JSON object"),
    ("temperature beyond a float", C, completion(temperature=10**400), "temperature",
     "too large"),
    ("temperature NaN", C, b'{"prompt": "hi", "temperature": NaN}', None,
     "temperature must be in 0..100, got nan"),
    ("top_p Infinity", C, b'{"prompt": "hi", "top_p": Infinity}', None, "top_p"),
    ("stop a number", C, completion(stop=5), "stop", "'stop' must be a string or a list"),
    ("stop with a number", C, completion(stop=["a", 1]), "stop", "'stop' must be"),
    ("stream_options a list", C, completion(stream_options=[]), "stream_options",
     "'stream_options' must be an object, got a list"),
    ("include_usage a string", C, completion(stream_options={"include_usage": "yes"}),
     "stream_options.include_usage", "must be a boolean, got a string"),
    ("model a list", C, completion(model=["m"]), "model", "'model' must be a string"),
    ("n beyond 64 bits", C, completion(n=2**70), "n", "'n' must be in 1..8"),
    ("token id beyond 64 bits", C, completion(prompt=[5, 2**70]), "prompt",
     "prompt token ids must be in 0..399"),
    ("max_tokens a string", C, completion(max_tokens="3"), "max_tokens",
     "'max_tokens' must be an integer, got a string"),
    ("readout a string", C, completion(readout="yes"), "readout",
     "'readout' must be a boolean, got a string"),
    ("readout_prompt a number", CH, chat("x", readout_prompt=1), "readout_prompt",
     "'readout_prompt' must be a boolean, got an integer"),
    ("content a number", CH, chat(5), "messages", "messages[0].content must be a string"),
    ("role missing", CH, json.dumps({"messages": [{"content": "x"}]}).encode(), "messages",
     "must be an object with a 'role'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "raw", "param", "words"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE]
)
def test_hostile_request_is_a_400_naming_the_field(
    url: str, logs: Path, path: str, raw: bytes, param: str | None, words: str
) -> None:
    error = openai_error(post(url, path, raw), 400)
    assert words in error["message"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert_clean_logs(logs)


def test_valid_surrogate_pairs_and_null_fields_are_still_served(url: str) -> None:
    """The checks refuse only what is broken: an escaped pair (an emoji) is text, and
    null means "not given" for every optional field, as in OpenAI's API."""
    nulls = dict.fromkeys(("seed", "stop", "n", "readout", "stream_options", "model"))
    resp = post(url, C, completion(prompt="smile \ud83d\ude00", temperature=0, **nulls))
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    assert len(choice["token_ids"]) == 2 and len(choice["readout"]) == 2  # readout on
    resp = post(url, CH, chat([{"type": "text", "text": "\ud83d\ude00"}], seed=2**63 - 1))
    assert resp.status_code == 200, resp.text


def test_unknown_route_and_method_get_openai_errors(url: str) -> None:
    missing = openai_error(httpx.get(f"{url}/v1/nope"), 404)
    assert missing["type"] == "not_found_error" and "/v1/nope" in missing["message"]
    wrong = openai_error(httpx.get(f"{url}{C}"), 405)
    assert "Method Not Allowed" in wrong["message"]


# ---- serve: fuzzing ------------------------------------------------------------------

FIELDS = [
    "max_completion_tokens", "temperature", "top_p", "n", "stop", "seed", "stream",
    "stream_options", "ignore_eos", "readout", "readout_prompt", "model", "logprobs", "echo",
    "logit_bias", "user",
]  # fmt: skip
PROMPTS = ANY_TEXT | st.lists(st.integers(-(2**70), 2**70), max_size=4) | VALUES
MESSAGES = st.lists(
    st.fixed_dictionaries({"role": ANY_TEXT | VALUES, "content": ANY_TEXT | VALUES}) | VALUES,
    max_size=2,
)


def _request(first: str, first_values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {first: first_values, "max_tokens": st.integers(1, 3) | VALUES},
        optional={name: VALUES for name in FIELDS},
    )


@FUZZ
@given(
    case=st.tuples(st.just(C), _request("prompt", PROMPTS))
    | st.tuples(st.just(CH), _request("messages", MESSAGES | VALUES))
)
def test_fuzzed_requests_never_get_a_500(url: str, logs: Path, case: tuple[str, Any]) -> None:
    path, body = case
    resp = post(url, path, json.dumps(body, allow_nan=True).encode())  # lone surrogates escaped
    assert resp.status_code in (200, 400, 404), resp.text[:500]
    if resp.status_code != 200:
        openai_error(resp, resp.status_code)
    assert_clean_logs(logs)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_fuzzed_bytes_are_400s(url: str, raw: bytes) -> None:
    resp = post(url, C, raw)
    assert resp.status_code in (200, 400, 404), resp.text[:500]
    if resp.status_code != 200:
        openai_error(resp, resp.status_code)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300) | VALUES.map(lambda v: json.dumps(v).encode()))
def test_parse_body_raises_only_request_errors(raw: bytes) -> None:
    """The JSON layer alone (no server): a value, or a 400 `RequestError`; never another
    exception and never a string that UTF-8 cannot encode."""
    try:
        value = parse_body(raw)
    except RequestError as exc:
        assert exc.status == 400 and exc.message
    else:
        json.dumps(value, ensure_ascii=False, allow_nan=True).encode("utf-8")


# ---- serve: oversize bodies and a long prompt ----------------------------------------


def test_declared_oversize_body_is_refused_before_it_is_read(servers: dict[str, str]) -> None:
    """Only the head is sent: the 413 comes back at once, so nothing waited for a body."""
    for name, cap, shown in (("main", 4 << 20, "4194304 bytes (4 MiB)"),
                             ("small", SMALL_CAP, "65536 bytes (64 KiB)")):  # fmt: skip
        head = f"POST {C} HTTP/1.1\nHost: x\nContent-Type: application/json\n"
        head += f"Content-Length: {cap + 1}\n"
        status, body = split_response(raw_http(servers[name], head, []))
        assert status == 413
        error = body["error"]
        assert set(error) == ERROR_KEYS and error["code"] == "request_too_large"
        assert f"larger than {shown}" in error["message"]
        assert "--max-request-bytes" in error["message"]


def test_chunked_body_is_cut_off_once_it_passes_the_cap(servers: dict[str, str]) -> None:
    """No Content-Length: the server reads until the cap is passed and answers 413
    although the body never ends (the client never sends the last chunk)."""
    chunk = b"%x\r\n%s\r\n" % (16 * 1024, b"x" * 16 * 1024)
    head = f"POST {C} HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n"
    status, body = split_response(raw_http(servers["small"], head, [chunk] * 5))
    assert status == 413 and "65536 bytes" in body["error"]["message"]


def test_max_request_bytes_sets_the_cap(servers: dict[str, str], logs: Path) -> None:
    """The same 100 KB body: over the 64K server's cap, within the default one."""
    raw = completion(prompt="fox " * 25_000)
    assert len(raw) > SMALL_CAP
    assert openai_error(post(servers["small"], C, raw), 413)["code"] == "request_too_large"
    error = openai_error(post(servers["main"], C, raw), 400)  # read, tokenized, too long
    assert "this model takes at most 256 positions" in error["message"]
    assert error["param"] == "prompt"
    assert_clean_logs(logs)


def test_a_long_prompt_does_not_block_health(url: str, logs: Path) -> None:
    """A 1.3 MB prompt tokenizes for seconds in a worker thread: /health, asked while it
    does, answers long before the prompt's own (400: too long) answer."""
    raw = completion(prompt="the quick brown fox jumps " * 50_000)
    done: dict[str, Any] = {}

    def slow() -> None:
        done["resp"] = post(url, C, raw)
        done["at"] = time.monotonic()

    start = time.monotonic()
    worker = threading.Thread(target=slow)
    worker.start()
    time.sleep(0.3)
    asked = time.monotonic()
    health = httpx.get(f"{url}/health", timeout=120)
    answered = time.monotonic()
    worker.join()
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert "positions" in openai_error(done["resp"], 400)["message"]
    slow_took = done["at"] - start
    assert answered < done["at"], "/health waited for the long prompt"
    assert answered - asked < slow_took / 2, (answered - asked, slow_took)
    assert_clean_logs(logs)


# ---- the command lines: --port and the bind ------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amygdala", *args],
        capture_output=True, text=True, timeout=120, env=clean_env(HF_HUB_OFFLINE="1"),
    )  # fmt: skip


@pytest.mark.parametrize("command", ["serve", "memory-server"])
@pytest.mark.parametrize("port", ["-5", "70000", "abc", "1e3"])
def test_bad_port_is_a_clear_error(tmp_path: Path, command: str, port: str) -> None:
    source = ["--model", str(tmp_path)] if command == "serve" else ["--graph", "g.jsonl"]
    done = _cli(command, *source, "--port", port)
    assert done.returncode == 2
    assert (
        f"amygdala {command}: error: argument --port: must be a whole number in 0…65535 "
        f"(0 picks a free port), got '{port}'"
    ) in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_checks_the_port_before_loading_the_model(tmp_path: Path) -> None:
    """A busy port is reported even though the model does not exist: the socket is bound
    first, so a wrong port never costs a model load."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        done = _cli("serve", "--model", str(tmp_path / "no-model"), "--port", str(port))
    assert done.returncode == 2
    assert f"error: cannot listen on 127.0.0.1:{port} (Address already in use); pick another --port" in done.stderr  # fmt: skip
    assert "Traceback" not in done.stderr


def test_bad_max_request_bytes_is_a_clear_error(tmp_path: Path) -> None:
    done = _cli("serve", "--model", str(tmp_path), "--max-request-bytes", "0")
    assert done.returncode == 2
    assert "argument --max-request-bytes: must be a whole number of bytes >= 1" in done.stderr


# ---- memory-server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def memory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    graph = tmp_path_factory.mktemp("hostile-graph") / "graph.jsonl"
    records = [
        {"key": "journal#a", "node_type": "episodic_session", "timestamp": "2026-04-02",
         "content": "The kitchen was warm.\nwarmth:8"},
        {"key": "note#b", "node_type": "semantic", "content": "Fog over the harbour."},
    ]  # fmt: skip
    graph.write_text("".join(json.dumps(r) + "\n" for r in records))
    with memory_server(graph, "--max-request-bytes", "256K", env=clean_env()) as running:
        yield running


def rpc(method: str, params: Any, ident: Any = 1) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": ident, "method": method, "params": params}).encode()


def tool(name: str, arguments: Any) -> bytes:
    return rpc("tools/call", {"name": name, "arguments": arguments})


def mcp_post(running: Any, raw: bytes) -> httpx.Response:
    return httpx.post(running.url, content=raw, headers=MCP_HEADERS, timeout=60)


def assert_no_traceback(running: Any) -> None:
    text = "".join(running.stderr)
    assert "Traceback" not in text and "Exception in ASGI" not in text, text[-3000:]


MCP_PARSE_ERRORS = [
    ("lone surrogate in a key argument", tool("memory_render", {"key": "\ud800"})),
    ("lone surrogate in a query", tool("memory_query", {"query": "key:\udc00*"})),
    ("nested 100,000 deep", b"[" * 100_000 + b"]" * 100_000),
    ("nested in the arguments", b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", '
     b'"params": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("not UTF-8", b'{"jsonrpc": "2.0", "id": 1, "method": "\xff"}'),
]  # fmt: skip


@pytest.mark.parametrize(
    "raw", [c[1] for c in MCP_PARSE_ERRORS], ids=[c[0] for c in MCP_PARSE_ERRORS]
)
def test_memory_server_unparsable_request_is_a_jsonrpc_400(memory: Any, raw: bytes) -> None:  # fmt: skip
    resp = mcp_post(memory, raw)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == -32700  # JSON-RPC parse error
    assert_no_traceback(memory)


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        ({"name": "journal_tail", "arguments": {"n": "x"}}, "valid integer"),
        ({"name": "memory_render", "arguments": {"key": ["journal#a"]}}, "valid string"),
        ({"name": "memory_search", "arguments": {"keyword": "k", "limit": -(2**70)}}, ">= 0"),
        ({"name": "memory_query", "arguments": {"query": "all | limit:-1"}}, "limit:<n>"),
    ],
)
def test_memory_server_wrong_tool_arguments_are_tool_errors(
    memory: Any, arguments: dict[str, Any], words: str
) -> None:
    resp = mcp_post(memory, rpc("tools/call", arguments))
    assert resp.status_code == 200
    result = resp.json()["result"]
    assert result["isError"] is True and words in result["content"][0]["text"]
    assert_no_traceback(memory)


def test_memory_server_refuses_oversize_bodies_unread(memory: Any) -> None:
    split = urlsplit(memory.url)
    head = f"POST {split.path} HTTP/1.1\nHost: x\nContent-Type: application/json\n"
    status, body = split_response(raw_http(memory.url, head + f"Content-Length: {10**9}\n", []))
    assert status == 413
    assert body["jsonrpc"] == "2.0" and body["error"]["code"] == -32600
    assert "larger than 262144 bytes (256 KiB)" in body["error"]["message"]
    chunk = b"%x\r\n%s\r\n" % (16 * 1024, b"x" * 16 * 1024)
    status, body = split_response(raw_http(memory.url, head + "Transfer-Encoding: chunked\n",
                                           [chunk] * 20))  # fmt: skip
    assert status == 413 and "262144 bytes" in body["error"]["message"]
    fine = mcp_post(memory, tool("memory_search", {"keyword": "kitchen " * 4000}))
    assert fine.status_code == 200  # 32 KB: within the cap
    assert_no_traceback(memory)


@FUZZ
@given(
    name=st.sampled_from(["memory_query", "memory_render", "journal_tail", "memory_search"])
    | ANY_TEXT,
    arguments=st.dictionaries(
        st.sampled_from(["query", "key", "n", "keyword", "limit"]) | ANY_TEXT, VALUES, max_size=3
    )
    | VALUES,
    ident=VALUES,
)
def test_memory_server_fuzzed_calls_never_get_a_500(
    memory: Any, name: Any, arguments: Any, ident: Any
) -> None:
    raw = json.dumps(
        {"jsonrpc": "2.0", "id": ident, "method": "tools/call",
         "params": {"name": name, "arguments": arguments}},
        allow_nan=True,
    ).encode()  # fmt: skip
    resp = mcp_post(memory, raw)
    assert resp.status_code in (200, 202, 400), resp.text[:500]
    assert_no_traceback(memory)


# ---- the vLLM plugin's request fields (unit level) -----------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, (True, False)),
        ({"readout": None, "readout_prompt": None}, (True, False)),
        ({"readout": False, "readout_prompt": True}, (False, True)),
    ],
)
def test_readout_flags_defaults_and_booleans(
    extra: dict[str, Any], expected: tuple[bool, bool]
) -> None:
    assert readout_flags(extra) == expected


@pytest.mark.parametrize(
    ("extra", "param", "got"),
    [
        ({"readout": "yes"}, "readout", "a string"),
        ({"readout": 1}, "readout", "an integer"),
        ({"readout": [True]}, "readout", "a list"),
        ({"readout_prompt": 0.0}, "readout_prompt", "a number"),
        ({"readout_prompt": {"on": True}}, "readout_prompt", "an object"),
    ],
)
def test_readout_flags_refuse_non_booleans(extra: dict[str, Any], param: str, got: str) -> None:
    """The vLLM plugin answers these with its vLLM-style 400 (`api._error`) from the same
    `RequestError`, so both servers say the same thing."""
    with pytest.raises(RequestError) as caught:
        readout_flags(extra)
    assert caught.value.status == 400 and caught.value.param == param
    assert caught.value.message == f"'{param}' must be a boolean, got {got}"
