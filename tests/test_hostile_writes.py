"""Hostile outputs, through the real command line (issue 12: writes, outputs that are
inputs, things that are not files, `amygdala run` failing half-way, orphan shards).

Every case runs `python -m amygdala …` as a subprocess and asserts: exit code 2, no
traceback, one `error:` line naming the path and the cause, and every protected file
byte-identical with no leftover (`.tmp-*`, `.old-*`) beside it. The faults are real:
device nodes, FIFOs and sockets made here, names longer than the file system allows,
/proc, `ulimit -f` (RLIMIT_FSIZE: a write past it fails with EFBIG), and, where this
process may mount, a read-only and a full tmpfs.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from _training_rows import write_training_dir

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux devices, /proc, mounts")

OLD = b"old bytes that must survive\n"  # what protected files hold before a failing run


def training_data(root: Path) -> Path:
    """Two emotions, four train and two held-out texts each (a report needs held-out)."""
    return write_training_dir(root, texts=6, heldout=2)


def memory_graph(path: Path, emotions: list[str]) -> Path:
    """A graph export whose nodes carry tag lines for `emotions` (60 nodes)."""
    lines = []
    for i in range(60):
        emotion, other = emotions[i % len(emotions)], emotions[(i + 1) % len(emotions)]
        body = f"Day {i}: at the station I felt {emotion} all the way home, slowly."
        lines.append(json.dumps({"key": f"j-{i:03d}", "content": f"{body}\n{emotion}:9 {other}:1"}))
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def amygdala(*argv: str | Path, cwd: Path, fsize: int | None = None) -> Result:
    """Run `python -m amygdala argv…`; `fsize` caps the bytes any file may grow to."""

    def limit() -> None:  # runs in the child: a write past `fsize` fails with EFBIG
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    proc = subprocess.run(
        [sys.executable, "-m", "amygdala", *map(str, argv)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=limit,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""},
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def refused(result: Result, *fragments: str) -> str:
    """Exit 2, no traceback, exactly one `error:` line holding every fragment; the line."""
    assert result.code == 2, result.text[-3000:]
    assert "Traceback" not in result.text, result.text[-3000:]
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.err[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under `root`, hidden ones too: file bytes, or what kind of thing it is."""
    found: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        rel = path.relative_to(root).as_posix()
        if stat.S_ISREG(mode):
            found[rel] = path.read_bytes()
        elif stat.S_ISLNK(mode):
            found[rel] = f"link -> {os.readlink(path)}"
        else:
            found[rel] = stat.S_IFMT(mode)
    return found


# --- fixtures ----------------------------------------------------------------------------


@dataclass
class Env:
    tmp: Path
    model: Path
    data: Path
    out: Path  # a folder holding an "earlier" artifact that failing runs must not touch

    @property
    def vectors(self) -> Path:
        return self.out / "readout.safetensors"

    def train(self, *extra: str | Path, output: str | Path | None = None) -> list[str | Path]:
        return [
            "train",
            "--model",
            self.model,
            "--training-data-dir",
            self.data,
            "--output",
            output if output is not None else self.vectors,
            "--target-layers",
            "1,3",
            "--min-examples",
            "3",
            "--no-progress",
            "--device",
            "cpu",
            "--cache-dir",  # in tmp: a store appears there once the model has run
            self.tmp / "cache",
            *extra,
        ]


@pytest.fixture
def env(tmp_path: Path, tiny_model_dirs: Callable[[str], Path]) -> Env:
    out = tmp_path / "out"
    out.mkdir()
    (out / "readout.safetensors").write_bytes(OLD)
    (out / "readout.json").write_bytes(OLD)
    return Env(tmp_path, tiny_model_dirs("llama"), training_data(tmp_path / "data"), out)


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dirs: Callable[[str], Path]
) -> Env:
    """A real artifact (for readout and report), trained once."""
    tmp = tmp_path_factory.mktemp("trained")
    out = tmp / "art"
    env = Env(tmp, tiny_model_dirs("llama"), training_data(tmp / "data"), out)
    result = amygdala(*env.train(), cwd=tmp)
    assert result.code == 0, result.text[-3000:]
    return env


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A folder with a short path (a socket's path must fit in 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="amy-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """`mount(options)` → a fresh tmpfs (skips where this process may not mount)."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        where = tmp_path / f"mnt{len(mounted)}"
        if not _mount_tmpfs(where, options):
            pytest.skip("cannot mount a tmpfs here (needs CAP_SYS_ADMIN)")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


# --- train: every output checked before the model loads ----------------------------------


def _char_device(env: Env) -> Path:
    path = env.tmp / "full"
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 7))  # the numbers of /dev/full
    except PermissionError:
        pytest.skip("mknod needs root")
    return path


def _fifo(env: Env) -> Path:
    path = env.tmp / "fifo"
    os.mkfifo(path)
    return path


def _long_name(env: Env) -> Path:
    return env.out / ("a" * 300 + ".safetensors")


def _under_a_file(env: Env) -> Path:
    return env.data / "joy.jsonl" / "readout.safetensors"


def _a_directory(env: Env) -> Path:
    (env.tmp / "adir").mkdir()
    return env.tmp / "adir"


def _symlink_to_input(env: Env) -> Path:
    link = env.tmp / "link.safetensors"
    link.symlink_to(env.data / "fear.jsonl")
    return link


OUTPUT_CASES: dict[str, tuple[Callable[[Env], Path], list[str]]] = {
    "a directory": (_a_directory, ["adir (--output)", "it is a directory, and a file is needed"]),
    "a character device": (_char_device, ["full (--output)", "it is a character device"]),
    "a FIFO": (_fifo, ["fifo (--output)", "it is a FIFO (named pipe)"]),
    "a name too long": (_long_name, ["(--output)", "is 312 bytes long", "allows 255"]),
    "a file on the way": (_under_a_file, ["joy.jsonl is a file, not a directory"]),
    "an input file": (
        lambda e: e.data / "joy.jsonl",
        ["joy.jsonl (--output)", "it is a file of the training data (--training-data-dir)"],
    ),
    "a symlink to an input": (
        _symlink_to_input,
        ["link.safetensors (--output)", "the training data (--training-data-dir)"],
    ),
    "a model file": (
        lambda e: e.model / "model.safetensors",
        ["model.safetensors (--output)", "it is a file of the model (--model)"],
    ),
    "under /proc": (
        lambda e: Path("/proc/readout.safetensors"),
        ["/proc/readout.safetensors (--output)", "cannot create a file in /proc"],
    ),
}


@pytest.mark.parametrize("case", list(OUTPUT_CASES))
def test_unwritable_output_is_refused_before_training(env: Env, case: str) -> None:
    build, fragments = OUTPUT_CASES[case]
    target = build(env)
    before = snapshot(env.tmp), snapshot(env.model)
    line = refused(amygdala(*env.train(output=target), cwd=env.tmp), *fragments)
    assert line.startswith("error: cannot write ")
    assert (snapshot(env.tmp), snapshot(env.model)) == before  # devices and inputs untouched


def test_a_socket_is_never_replaced(env: Env, short_tmp: Path) -> None:
    path = short_tmp / "s"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    try:
        refused(amygdala(*env.train(output=path), cwd=env.tmp), "it is a socket")
        assert stat.S_ISSOCK(path.lstat().st_mode)
    finally:
        server.close()


def _report_is_a_file(env: Env) -> list[str | Path]:
    (env.tmp / "report").write_bytes(OLD)
    return ["--report", env.tmp / "report"]


def _quality_is_a_folder(env: Env) -> list[str | Path]:
    (env.tmp / "rep" / "quality.json").mkdir(parents=True)
    return ["--report", env.tmp / "rep"]


def _cache_is_a_file(env: Env) -> list[str | Path]:
    (env.tmp / "cache").write_bytes(OLD)
    return ["--cache-dir", env.tmp / "cache"]


FLAG_CASES: dict[str, tuple[Callable[[Env], list[str | Path]], list[str]]] = {
    "--report FILE": (_report_is_a_file, ["report (--report)", "a directory is needed"]),
    "--report DIR/quality.json a folder": (
        _quality_is_a_folder,
        ["quality.json (--report)", "it is a directory, and a file is needed"],
    ),
    "--cache-dir FILE": (_cache_is_a_file, ["cache (--cache-dir)", "or pass --no-cache"]),
    "--report onto --output": (
        lambda e: ["--report", e.out, "--output", e.out / "report.html"],
        ["report.html (--report)", "--output writes the same path"],
    ),
}


@pytest.mark.parametrize("case", list(FLAG_CASES))
def test_report_and_cache_are_checked_before_training(env: Env, case: str) -> None:
    build, fragments = FLAG_CASES[case]
    extra = build(env)
    before = snapshot(env.tmp)
    refused(amygdala(*env.train(*extra), cwd=env.tmp), *fragments)
    assert snapshot(env.tmp) == before  # no activation store: it failed before the model ran


def test_json_output_without_manifest_names_the_real_problem(env: Env) -> None:
    line = refused(
        amygdala(*env.train(output=env.tmp / "x" / "readout.json"), cwd=env.tmp),
        "--output",
        "readout.json ends in .json",
        "e.g. --output",
        "readout.safetensors",
    )
    assert "must differ" not in line
    assert not (env.tmp / "x").exists()


def test_read_only_file_system(env: Env, tmpfs: Callable[[str], Path]) -> None:
    mnt = tmpfs("size=64k")
    (mnt / "readout.safetensors").write_bytes(OLD)
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, timeout=30)
    refused(
        amygdala(*env.train(output=mnt / "readout.safetensors"), cwd=env.tmp),
        "readout.safetensors (--output)",
        "Read-only file system",
    )
    assert snapshot(mnt) == {"readout.safetensors": OLD}


def test_full_file_system(env: Env, tmpfs: Callable[[str], Path]) -> None:
    mnt = tmpfs("size=64k")
    (mnt / "readout.safetensors").write_bytes(OLD)
    with pytest.raises(OSError):  # fill it up
        (mnt / "filler").write_bytes(b"\0" * 128 * 1024)
    before = snapshot(mnt)
    refused(
        amygdala(*env.train(output=mnt / "readout.safetensors"), cwd=env.tmp),
        "readout.safetensors (--output)",
        "is full",
    )
    assert snapshot(mnt) == before


# --- a write that fails at the very end: nothing partial, earlier outputs untouched -------


def test_report_write_failing_after_training_restores_the_artifact(env: Env) -> None:
    warm_args = env.train("--report", env.tmp / "warm", output=env.tmp / "warm" / "r.safetensors")
    warm = amygdala(*warm_args, cwd=env.tmp)  # fills the activation cache: no shard later
    assert warm.code == 0, warm.text[-3000:]
    sizes = {p.name: p.stat().st_size for p in (env.tmp / "warm").iterdir()}
    limit = (sizes["quality.json"] + sizes["report.html"]) // 2
    assert max(sizes["r.safetensors"], sizes["r.json"], sizes["quality.json"]) < limit
    assert limit < sizes["report.html"]  # only the last file cannot be written
    report = env.tmp / "report"
    before = snapshot(env.tmp)
    result = amygdala(*env.train("--report", report), cwd=env.tmp, fsize=limit)
    refused(result, f"cannot write {report / 'report.html'}", "File too large")
    # report.html is written only after training and saving the artifact, which was put back
    assert snapshot(env.tmp) == before


def test_readout_outputs_are_written_both_or_neither(trained: Env, tmp_path: Path) -> None:
    html, jsonl = tmp_path / "heat.html", tmp_path / "tokens.jsonl"
    args = ["readout", "--model", trained.model, "--vectors", trained.vectors]
    ok = amygdala(*args, "--html", html, "--jsonl", jsonl, "joy", cwd=tmp_path)
    assert ok.code == 0, ok.text[-3000:]
    limit = (jsonl.stat().st_size + html.stat().st_size) // 2
    assert jsonl.stat().st_size < limit < html.stat().st_size  # the second file fails
    html.write_bytes(OLD)
    jsonl.write_bytes(OLD)
    before = snapshot(tmp_path)
    result = amygdala(*args, "--html", html, "--jsonl", jsonl, "joy", cwd=tmp_path, fsize=limit)
    refused(result, f"cannot write {html}", "File too large")
    assert snapshot(tmp_path) == before


# --- outputs that are inputs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--html", "{vectors}"], ["readout.safetensors (--html)", "the vectors (--vectors)"]),
        (["--jsonl", "{manifest}"], ["readout.json (--jsonl)", "the manifest (--manifest)"]),
        (["--html", "{same}", "--jsonl", "{same}"], ["--html writes the same path"]),
    ],
)
def test_readout_never_overwrites_its_inputs(
    trained: Env, tmp_path: Path, flags: list[str], fragments: list[str]
) -> None:
    names = {
        "vectors": trained.vectors,
        "manifest": trained.vectors.with_suffix(".json"),
        "same": tmp_path / "x.html",
    }
    argv = [f.format(**names) for f in flags]
    before = snapshot(trained.out)
    result = amygdala(
        "readout",
        "--model",
        trained.model,
        "--vectors",
        trained.vectors,
        *argv,
        "joy",
        cwd=tmp_path,
    )
    refused(result, *fragments)
    assert snapshot(trained.out) == before
    assert not (tmp_path / "x.html").exists()


def test_extract_refuses_a_graph_inside_its_output_dir(tmp_path: Path) -> None:
    out = tmp_path / "training-data"
    first = amygdala(
        "extract", "--graph", memory_graph(tmp_path / "g.jsonl", ["warmth", "fear"]),
        "--output-dir", out, "--min-positives", "5", cwd=tmp_path,
    )  # fmt: skip
    assert first.code == 0, first.text[-3000:]
    graph = memory_graph(out / "graph.jsonl", ["joy", "anger"])
    before = snapshot(tmp_path)
    refused(
        amygdala("extract", "--graph", graph, "--output-dir", out, cwd=tmp_path),
        "training-data (--output-dir)",
        "the graph (--graph)",
        "is inside it, and it is replaced as a whole",
    )
    assert snapshot(tmp_path) == before


def test_report_output_dir_that_is_a_file(trained: Env, tmp_path: Path) -> None:
    target = tmp_path / "report"
    target.write_bytes(OLD)
    refused(
        amygdala(
            "report",
            "--vectors",
            trained.vectors,
            "--training-data-dir",
            trained.data,
            "--output-dir",
            target,
            cwd=tmp_path,
        ),
        "report (--output-dir)",
        "it is a file, and a directory is needed",
    )
    assert target.read_bytes() == OLD


# --- amygdala run: a failure anywhere leaves the output folder exactly as it was ---------


def _run(env: Env, graph: Path, out: Path, *extra: str | Path) -> list[str | Path]:
    return [
        "run", "--graph", graph, "--output-dir", out, "--model", env.model,
        "--target-layers", "1,3", "--no-progress", "--device", "cpu",
        "--min-positives", "5", "--min-examples", "5", *extra,
    ]  # fmt: skip


@pytest.fixture
def run_out(env: Env) -> Path:
    """A folder from a successful `amygdala run` (three emotions)."""
    out = env.tmp / "OUT"
    graph = memory_graph(env.tmp / "three.jsonl", ["warmth", "fear", "curiosity"])
    result = amygdala(*_run(env, graph, out), cwd=env.tmp)
    assert result.code == 0, result.text[-3000:]
    return out


RUN_FAILURES: dict[str, tuple[list[str], str]] = {
    "bad --target-layers": (["--target-layers", "1,99"], "layer 99 is out of range"),
    "missing model": (["--model", "no-such-model-dir"], "no-such-model-dir"),
    "too few examples": (["--min-examples", "500"], "--min-examples"),
}


@pytest.mark.parametrize("case", list(RUN_FAILURES))
def test_failed_run_leaves_the_output_folder_as_it_was(env: Env, run_out: Path, case: str) -> None:
    extra, fragment = RUN_FAILURES[case]
    other = memory_graph(env.tmp / "two.jsonl", ["joy", "anger"])  # other training data
    before = snapshot(run_out)
    result = amygdala(*_run(env, other, run_out), *extra, cwd=env.tmp)
    refused(result, fragment)
    assert f"left {run_out} as it was before this run" in result.err
    assert snapshot(run_out) == before


def test_failed_run_into_a_new_folder_leaves_nothing(env: Env) -> None:
    graph = memory_graph(env.tmp / "g.jsonl", ["warmth", "fear"])
    out = env.tmp / "new" / "OUT"
    refused(amygdala(*_run(env, graph, out, "--target-layers", "99"), cwd=env.tmp), "99")
    assert not (env.tmp / "new").exists()


def test_run_output_dir_that_is_a_file(env: Env) -> None:
    graph = memory_graph(env.tmp / "g.jsonl", ["warmth", "fear"])
    refused(
        amygdala(*_run(env, graph, graph), cwd=env.tmp),
        "g.jsonl (--output-dir)",
        "it is a file, and a directory is needed",
    )


# --- the activation cache: .tmp- files of killed runs are removed on the next run ----------

_STUCK_WRITER = """
import json, os, sys, time
from pathlib import Path
from amygdala.store import ActivationStore
import torch
store_dir = Path(sys.argv[1])
fingerprint = json.loads((store_dir / "fingerprint.json").read_text())
fingerprint.pop("format")
store = ActivationStore(store_dir.parent, fingerprint)
assert store.path == store_dir
if sys.argv[2] == "write":
    os.fsync = lambda fd: time.sleep(3600)  # hang inside the atomic write: a .tmp- shard
    store.write(["0" * 64], torch.zeros(1, 2, 64))
print("holding", flush=True)
time.sleep(3600)
"""


def _stuck(store_dir: Path, mode: str) -> subprocess.Popen[str]:
    """A real process using the store: `write` hangs half-way through a shard, `hold`
    keeps the store open. Returns once it got there."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _STUCK_WRITER, str(store_dir), mode],
        stdout=subprocess.PIPE,
        text=True,
    )
    if mode == "write":
        deadline = time.monotonic() + 120
        while not list((store_dir / "shards").glob(".tmp-*")):
            assert proc.poll() is None and time.monotonic() < deadline, "writer never started"
            time.sleep(0.05)
    else:
        assert proc.stdout is not None and proc.stdout.readline() == "holding\n"
    return proc


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def test_orphan_shard_of_a_killed_run_is_removed_on_the_next_run(env: Env) -> None:
    cache = env.tmp / "cache"  # Env.train's --cache-dir
    args = env.train()
    assert amygdala(*args, cwd=env.tmp).code == 0
    (store_dir,) = [p for p in cache.iterdir() if p.is_dir()]
    holder = _stuck(store_dir, "hold")  # a live run: temporary files may be its own
    try:
        _kill(_stuck(store_dir, "write"))  # kill -9 in the middle of writing a shard
        orphans = list((store_dir / "shards").glob(".tmp-*"))
        assert len(orphans) == 1
        kept = amygdala(*args, cwd=env.tmp)
        assert kept.code == 0, kept.text[-3000:]
        assert orphans[0].exists() and "removed" not in kept.err
    finally:
        _kill(holder)

    cleaned = amygdala(*args, cwd=env.tmp)
    assert cleaned.code == 0, cleaned.text[-3000:]
    assert "removed 1 unfinished temporary file(s) left by an interrupted run" in cleaned.err
    assert not list(store_dir.rglob(".tmp-*"))


# --- the last resort: standard output that cannot be written -------------------------------


def _validate(trained: Env, stdout: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amygdala", "validate", str(trained.vectors)],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ""},
    )


@pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="no /dev/full")
def test_stdout_on_a_full_disk_is_one_error_line(trained: Env) -> None:
    with open("/dev/full", "w") as full:  # opened for writing, never replaced
        proc = _validate(trained, full.fileno())
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()  # no traceback, no "Exception ignored" at exit
    assert line.startswith("error: ") and "No space left on device" in line, line


def test_stdout_whose_reader_left_is_a_quiet_exit(trained: Env) -> None:
    read, write = os.pipe()
    os.close(read)  # `amygdala validate … | head` after head exited
    try:
        proc = _validate(trained, write)
    finally:
        os.close(write)
    assert proc.returncode == 1
    assert proc.stderr == ""
