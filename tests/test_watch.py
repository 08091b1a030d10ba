"""`amygdala watch`: the ranking logic, and the real TUI driven in tmux against a real server."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from _serving import TMUX, Pane, bars, random_artifact, running_servers
from amygdala.cli.watch import StableRanking, WatchState

KEY = "watch-key"
CONCEPTS = ["warmth", "fear", "joy", "calm", "anger", "curiosity"]
LAYERS = [1, 3]


# ---- hysteresis ----------------------------------------------------------------------


def test_ranking_starts_sorted_and_keeps_order_within_the_margin() -> None:
    rank = StableRanking(k=3, hysteresis=0.1)  # margin = 0.1 × the largest |value|
    assert rank.update([0.0, 1.0, 0.5, 0.9]) == [1, 3, 2]
    assert rank.update([0.0, 0.95, 0.5, 1.0]) == [1, 3, 2]  # 1.0 - 0.95 < 0.1
    assert rank.update([0.0, 0.8, 0.5, 1.0]) == [3, 1, 2]  # 1.0 - 0.8 > 0.1: swap


def test_ranking_admits_a_newcomer_only_past_the_margin() -> None:
    rank = StableRanking(k=2, hysteresis=0.1)
    assert rank.update([1.0, 0.5, 0.0]) == [0, 1]
    assert rank.update([1.0, 0.5, 0.55]) == [0, 1]  # 0.55 - 0.5 < 0.1: stays out
    assert rank.update([1.0, 0.5, 0.7]) == [0, 2]  # beats the weakest by 0.2
    assert StableRanking(k=2, hysteresis=0.0).update([0.1, 0.3, 0.2]) == [1, 2]


def test_keys_change_layer_and_mode() -> None:
    state = WatchState(
        concepts=CONCEPTS, layers=LAYERS, calibrated=True, top=5, hysteresis=0.1, smooth=0.0
    )
    assert state.key("2") and state.layer_index == 1
    assert state.key("9") and state.layer_index == 1  # no ninth layer: ignored
    assert state.key("r") and state.mode == "raw"
    assert state.key("r") and state.mode == "z"
    assert not state.key("q")
    raw_only = WatchState(
        concepts=CONCEPTS,
        layers=LAYERS,
        calibrated=False,
        top=5,
        hysteresis=0.1,
        smooth=0.0,
        mode="raw",
    )
    assert raw_only.key("r") and raw_only.mode == "raw"  # nothing to toggle to


# ---- the real terminal ---------------------------------------------------------------


@pytest.fixture(scope="module")
def server(
    tiny_model_dirs: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    model = tiny_model_dirs("llama")
    tmp = tmp_path_factory.mktemp("watch")
    vectors = random_artifact(model, tmp / "readout.safetensors", LAYERS, CONCEPTS)
    with running_servers(
        (
            ["--model", str(model), "--vectors", str(vectors)],
            tmp / "serve.log",
            {"AMYGDALA_API_KEY": KEY},
        )
    ) as (url,):
        yield url


@pytest.mark.skipif(
    TMUX is None,
    reason="no tmux on PATH (Debian: apt-get install tmux); the terminal view is not exercised",
)
def test_watch_in_tmux(server: str, tmp_path: Path) -> None:
    prompt = "The quick brown fox"
    rc = tmp_path / "rc"
    argv = [
        sys.executable,
        "-m",
        "amygdala",
        "watch",
        "--url",
        server,
        "--max-tokens",
        "30",
        "--temperature",
        "0",
        prompt,
    ]
    command = (
        f"env AMYGDALA_API_KEY={KEY} HF_HUB_OFFLINE=1 {shlex.join(argv)}; "
        f"echo $? > {shlex.quote(str(rc))}"
    )
    pane = Pane(f"amygdala-watch-{tmp_path.name}", f"sh -c {shlex.quote(command)}")
    try:
        shown = pane.wait_for(r"done \(length\)")
        assert "layer 3 · z-scores" in shown and "recent tokens" in shown
        assert shown.count("█") > 0
        # the bars are the last streamed token's z-scores at layer 3
        body = {"prompt": prompt, "max_tokens": 30, "temperature": 0}
        ref = httpx.post(
            f"{server}/v1/completions",
            json=body,
            timeout=60,
            headers={"Authorization": f"Bearer {KEY}"},
        ).json()["choices"][0]
        last_z = dict(zip(CONCEPTS, ref["readout_z"][-1][LAYERS.index(3)]))
        shown_bars = bars(shown)
        assert set(shown_bars) == set(CONCEPTS)
        assert shown_bars == pytest.approx({c: round(v, 2) for c, v in last_z.items()}, abs=0.011)

        pane.keys("r")
        shown = pane.wait_for(r"layer 3 · raw dot products")
        last_raw = dict(zip(CONCEPTS, ref["readout"][-1][LAYERS.index(3)]))
        assert bars(shown) == pytest.approx(
            {c: round(v, 2) for c, v in last_raw.items()}, abs=0.011
        )
        pane.keys("1")
        shown = pane.wait_for(r"layer 1 · raw dot products")
        last_raw1 = dict(zip(CONCEPTS, ref["readout"][-1][LAYERS.index(1)]))
        assert bars(shown) == pytest.approx(
            {c: round(v, 2) for c, v in last_raw1.items()}, abs=0.011
        )
        assert "top concepts · layer 1" in shown
        pane.keys("q")
        deadline = time.monotonic() + 30
        while not rc.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert rc.read_text().strip() == "0"
    finally:
        pane.kill()


def test_watch_without_key_is_a_clear_error(server: str, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "amygdala", "watch", "--url", server, "hi"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 2
    assert "wants an API key: put it in $AMYGDALA_API_KEY" in out.stderr
