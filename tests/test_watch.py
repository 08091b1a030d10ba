"""`amygdala watch`: the ranking logic, and the real TUI driven in tmux against a real server."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from _serving import TMUX, Pane, bars, random_artifact, running_servers
from amygdala.cli.watch import CombinedView, StableRanking, WatchState

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


COMBINED = {
    "weights": [[0.5, -1.0, 2.0, 0.0, 1.0, 3.0], [1.5, 1.0, -0.5, 2.0, 0.25, -1.0]],
    "mean": [0.1, 0.0, -0.2, 0.3, 0.0, 1.0],
    "std": [2.0, 1.0, 0.5, 4.0, 1.0, 2.5],
    "unit": "token",
}


def test_combined_row_is_the_weighted_sum_of_the_layers() -> None:
    """With a combined score the state keeps one more row: Σ weights · raw, and its z."""
    view = CombinedView.from_manifest(
        {"layers": LAYERS, "concepts": CONCEPTS, "combined": COMBINED}
    )
    assert view is not None
    state = WatchState(
        concepts=CONCEPTS,
        layers=LAYERS,
        calibrated=True,
        top=3,
        hysteresis=0.1,
        smooth=0.0,
        combined=view,
    )
    rng = np.random.default_rng(0)
    weights, mean, std = (
        np.array(COMBINED[k], dtype=np.float64) for k in ("weights", "mean", "std")
    )
    for _ in range(3):
        raw = rng.normal(size=(2, 6))
        state.add_token("t", "t", raw.tolist(), (raw * 2).tolist())  # computed from raw
    want = (raw * weights).sum(0)
    np.testing.assert_allclose(state.values["raw"][2], want, rtol=1e-12)
    np.testing.assert_allclose(state.values["z"][2], (want - mean) / std, rtol=1e-12)
    # a server's readout_combined is taken as sent
    state.add_token("u", "u", raw.tolist(), raw.tolist(), [9.0] * 6)
    assert state.values["raw"][2] == [9.0] * 6
    assert state.recent[-1][1][2] == [9.0] * 6
    # keys: 0 selects the combined row, 1-2 the layers
    assert state.key("1") and state.view_name() == "layer 1"
    assert state.key("0") and state.layer_index == 2 and state.view_name() == "combined"
    order, row = state.shown()
    assert row == state.values["z"][2] and order == sorted(order, key=lambda c: -row[c])
    plain = WatchState(
        concepts=CONCEPTS, layers=LAYERS, calibrated=True, top=5, hysteresis=0.1, smooth=0.0
    )
    assert plain.key("0") and plain.layer_index == 0  # no combined score: ignored


def test_a_combined_entry_that_does_not_fit_is_refused() -> None:
    from amygdala.errors import ConfigError

    man = {"layers": LAYERS, "concepts": CONCEPTS, "combined": {**COMBINED, "mean": [0.0]}}
    with pytest.raises(ConfigError, match="does not fit its 2 layers x 6 concepts"):
        CombinedView.from_manifest(man)
    assert CombinedView.from_manifest({"layers": LAYERS, "concepts": CONCEPTS}) is None


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


@pytest.fixture(scope="module")
def combined_server(
    tiny_model_dirs: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, dict[str, object]]]:
    """A server whose manifest has a combined score."""
    import json

    model = tiny_model_dirs("llama")
    tmp = tmp_path_factory.mktemp("watch-combined")
    vectors = random_artifact(model, tmp / "readout.safetensors", LAYERS, CONCEPTS, combined=True)
    manifest = json.loads(vectors.with_suffix(".json").read_text())
    with running_servers(
        (
            ["--model", str(model), "--vectors", str(vectors)],
            tmp / "serve.log",
            {"AMYGDALA_API_KEY": KEY},
        )
    ) as (url,):
        yield url, manifest


@pytest.mark.skipif(TMUX is None, reason="no tmux on PATH; the terminal view is not exercised")
def test_watch_shows_the_combined_score_first(
    combined_server: tuple[str, dict[str, object]], tmp_path: Path
) -> None:
    url, manifest = combined_server
    prompt = "The lights went out"
    argv = [sys.executable, "-m", "amygdala", "watch", "--url", url, "--max-tokens", "12"]
    argv += ["--temperature", "0", prompt]
    command = f"env AMYGDALA_API_KEY={KEY} HF_HUB_OFFLINE=1 {shlex.join(argv)}; sleep 30"
    pane = Pane(f"amygdala-watch-c-{tmp_path.name}", f"sh -c {shlex.quote(command)}")
    try:
        shown = pane.wait_for(r"done \(length\)")
        assert "combined · z-scores" in shown
        assert "keys 0: combined · 1-2: layer" in " ".join(shown.split())  # the line may wrap
        body = {"prompt": prompt, "max_tokens": 12, "temperature": 0}
        ref = httpx.post(
            f"{url}/v1/completions",
            json=body,
            timeout=60,
            headers={"Authorization": f"Bearer {KEY}"},
        ).json()["choices"][0]
        comb = manifest["combined"]
        weights = np.array(comb["weights"])  # type: ignore[index]
        last = (np.array(ref["readout"][-1]) * weights).sum(0)  # Σ weights · raw
        np.testing.assert_allclose(ref["readout_combined"][-1], last, rtol=1e-5, atol=1e-6)
        z = (last - np.array(comb["mean"])) / np.array(comb["std"])  # type: ignore[index]
        want = {c: round(float(v), 2) for c, v in zip(CONCEPTS, z)}
        assert bars(shown) == pytest.approx(want, abs=0.011)
        pane.keys("r")
        shown = pane.wait_for(r"combined · raw dot products")
        assert bars(shown) == pytest.approx(
            {c: round(float(v), 2) for c, v in zip(CONCEPTS, last)}, abs=0.011
        )
        pane.keys("2")
        pane.wait_for(r"layer 3 · raw dot products")
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
