"""`amygdala watch`: stream a completion and watch the concepts move, token by token."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import sys
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

HELP = "stream a completion from `amygdala serve` and watch the top concepts live"
DESCRIPTION = """\
Streams a completion from an `amygdala serve` server and shows, live, the top concepts
of one layer as bars and the recent tokens with their top concept.

Keys: 0 chooses the combined score over all layers (shown first when the manifest has
one), 1-9 choose a layer (in manifest order), r toggles z-scores / raw dot products, q
quits. Rows keep their place until another concept leads by the hysteresis margin, so
the bars do not flicker.

Usage:
  amygdala serve --model M --vectors out/readout.safetensors &
  amygdala watch "Tell me about the storm last night."
  amygdala watch --chat --url http://127.0.0.1:8000 --max-tokens 200 "Hello!"
"""

Mode = Literal["z", "raw"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from amygdala import _defaults

    url = f"http://{_defaults.HOST}:{_defaults.SERVE_PORT}"  # where `amygdala serve` listens
    parser.add_argument("prompt", help="the prompt (or the user message with --chat)")
    parser.add_argument("--url", default=url, help=f"the server; default {url}")
    parser.add_argument(
        "--api-key-env",
        default=_defaults.API_KEY_ENV,
        help=f"environment variable holding the Bearer key; default {_defaults.API_KEY_ENV}",
    )
    parser.add_argument(
        "--chat",
        action="store_true",
        help="send the prompt as a chat message (the model's chat template)",
    )
    parser.add_argument(
        "--max-tokens", type=int, default=256, help="tokens to generate; default 256"
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.7,
        help="sampling temperature (0 = greedy); default 0.7",
    )
    parser.add_argument("--seed", type=int, default=None, help="sampling seed")
    parser.add_argument(
        "--layer",
        type=_layer_choice,
        default=None,
        help="the layer shown first (absolute index), or `combined`; by default combined "
        "when the manifest has a combined score, else the deepest layer",
    )
    parser.add_argument("--top", type=int, default=10, help="bars shown; default 10")
    parser.add_argument("--recent", type=int, default=12, help="recent tokens listed; default 12")
    parser.add_argument(
        "--hysteresis",
        type=float,
        default=0.1,
        help="a concept overtakes a shown row only when it leads by this share "
        "of the largest shown value; default 0.1",
    )
    parser.add_argument(
        "--smooth",
        type=float,
        default=0.0,
        help="exponential smoothing of the bars over tokens, 0..0.99 (0 = the "
        "latest token only); default 0",
    )
    parser.add_argument(
        "--exit-when-done",
        action="store_true",
        help="quit when the completion ends instead of waiting for q",
    )


def _layer_choice(value: str) -> int | str:
    from amygdala.cli.readout import layer_choice

    return layer_choice(value)


@dataclass(frozen=True)
class CombinedView:
    """The manifest's combined score, on the client: `combined[c] = Σ_l weights[l][c] ·
    readout[l][c]` and its z `(combined − mean) / std` (plain lists: no torch here)."""

    weights: list[list[float]]  # [n_layers][n_concepts]
    mean: list[float]
    std: list[float]

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> CombinedView | None:
        """None when the manifest has no `combined` entry; ConfigError when it is unusable."""
        from amygdala.errors import ConfigError

        entry = manifest.get("combined")
        if entry is None:
            return None
        n_layers, n_concepts = len(manifest["layers"]), len(manifest["concepts"])
        try:
            weights = [[float(w) for w in row] for row in entry["weights"]]
            mean = [float(m) for m in entry["mean"]]
            std = [float(x) for x in entry["std"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the server's manifest has an unusable 'combined' ({exc})") from None
        if (
            len(weights) != n_layers
            or any(len(row) != n_concepts for row in weights)
            or len(mean) != n_concepts
            or len(std) != n_concepts
            or not all(x > 0 for x in std)
        ):
            raise ConfigError(
                "the server's manifest has a 'combined' entry that does not fit its "
                f"{n_layers} layers x {n_concepts} concepts (or a std <= 0); check it with "
                "amygdala validate"
            )
        return cls(weights, mean, std)

    def raw(self, readout: list[list[float]]) -> list[float]:
        """`[n_layers][n_concepts]` per-layer readout → `[n_concepts]` combined values."""
        return [
            sum(w[c] * row[c] for w, row in zip(self.weights, readout))
            for c in range(len(self.mean))
        ]

    def z(self, combined: list[float]) -> list[float]:
        return [(v - m) / s for v, m, s in zip(combined, self.mean, self.std)]


class StableRanking:
    """The top-k rows of a changing vector, reordered only past a margin (hysteresis).

    A concept joins the shown rows only by beating the weakest shown one by the margin,
    and a row moves above its neighbour only when it leads it by the margin; the margin
    is `hysteresis` × the largest |value|, so it scales with raw and z alike.

    Example:
        rank = StableRanking(k=3, hysteresis=0.1)
        rank.update([0.0, 1.0, 0.5, 0.9])  # [1, 3, 2]
        rank.update([0.0, 0.95, 0.5, 1.0])  # still [1, 3, 2]: 1.0 vs 0.95 is within 0.1
    """

    def __init__(self, k: int, hysteresis: float) -> None:
        self.k = k
        self.hysteresis = hysteresis
        self.order: list[int] = []

    def update(self, values: Sequence[float]) -> list[int]:
        scale = max((abs(v) for v in values), default=0.0)
        margin = self.hysteresis * scale
        order = [c for c in self.order if c < len(values)]
        for c in sorted(range(len(values)), key=lambda i: -values[i]):
            if c in order:
                continue
            if len(order) < self.k:
                order.append(c)
                continue
            weakest = min(order, key=lambda i: values[i])
            if values[c] <= values[weakest] + margin:
                break  # every later candidate is weaker still
            order[order.index(weakest)] = c
        moved = True
        while moved:
            moved = False
            for i in range(len(order) - 1):
                if values[order[i + 1]] > values[order[i]] + margin:
                    order[i], order[i + 1] = order[i + 1], order[i]
                    moved = True
        self.order = order
        return list(order)


@dataclass
class WatchState:
    """What the screen shows; the stream thread writes it, the screen reads it.

    `values[mode]` holds one row per layer and, with a combined score, one more row for
    it (`layer_index == len(layers)` shows it).
    """

    concepts: list[str]
    layers: list[int]
    calibrated: bool
    top: int
    hysteresis: float
    smooth: float
    layer_index: int = 0
    mode: Mode = "z"
    text: str = ""
    status: str = "connecting"
    tokens: int = 0
    recent: deque[tuple[str, list[list[float]], list[list[float]] | None]] = field(
        default_factory=lambda: deque(maxlen=12)
    )
    values: dict[Mode, list[list[float]]] = field(default_factory=dict)
    rankings: dict[tuple[Mode, int], StableRanking] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    combined: CombinedView | None = None  # the manifest's combined score, when it has one

    @property
    def combined_index(self) -> int | None:
        """The row of the combined score (after the layers), or None without one."""
        return None if self.combined is None else len(self.layers)

    def view_name(self) -> str:
        """`combined` or `layer N`: what the selected row is."""
        if self.layer_index == self.combined_index:
            return "combined"
        return f"layer {self.layers[self.layer_index]}"

    def add_token(
        self,
        token: str,
        text: str,
        raw: list[list[float]],
        z: list[list[float]] | None,
        combined: list[float] | None = None,
    ) -> None:
        """One streamed token: its per-layer `raw` and `z`, and the server's
        `readout_combined` (computed from `raw` with the manifest's weights when absent)."""
        if self.combined is not None:
            value = list(combined) if combined is not None else self.combined.raw(raw)
            raw = [*raw, value]
            z = None if z is None else [*z, self.combined.z(value)]
        with self.lock:
            self.tokens += 1
            self.text += text
            pairs: tuple[tuple[Mode, list[list[float]] | None], ...] = (("raw", raw), ("z", z))
            for mode, new in pairs:
                if new is None:
                    continue
                old = self.values.get(mode)
                a = self.smooth if old is not None else 0.0
                self.values[mode] = [
                    [a * o + (1 - a) * n for o, n in zip(orow, nrow)]
                    for orow, nrow in zip(old or new, new)
                ]
            self.recent.append((token, raw, z))
            for (mode, li), rank in self.rankings.items():
                if mode in self.values:
                    rank.update(self.values[mode][li])

    def key(self, ch: str) -> bool:
        """Apply a key press; False means quit."""
        with self.lock:
            if ch in ("q", "Q", "\x03"):
                return False
            if ch == "0" and self.combined_index is not None:
                self.layer_index = self.combined_index
            elif ch.isdigit() and 1 <= int(ch) <= min(9, len(self.layers)):
                self.layer_index = int(ch) - 1
            elif ch in ("r", "R", "z", "Z") and self.calibrated:
                self.mode = "raw" if self.mode == "z" else "z"
            return True

    def shown(self) -> tuple[list[int], list[float]]:
        """Rows to draw (stable order) and the current values of the selected layer."""
        values = self.values.get(self.mode)
        if values is None:
            return [], []
        row = values[self.layer_index]
        key = (self.mode, self.layer_index)
        if key not in self.rankings:
            self.rankings[key] = StableRanking(self.top, self.hysteresis)
            self.rankings[key].update(row)
        return self.rankings[key].order, row


def render(state: WatchState, title: str) -> Any:
    """The whole screen as a rich renderable."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    with state.lock:
        order, row = state.shown()
        view = state.view_name()
        unit = "z-scores" if state.mode == "z" else "raw dot products"
        keys = (
            ("0: combined · " if state.combined is not None else "")
            + f"1-{min(9, len(state.layers))}: layer · "
            + ("r: raw/z" if state.calibrated else "no calibration: raw only")
            + " · q: quit"
        )
        head = Text.assemble(
            (f"{view} · {unit}", "bold cyan"),
            f"  ·  {state.tokens} tokens · {state.status}\n",
            (title, "bold"),
            f"  ·  keys {keys}",
        )
        bars = Table.grid(padding=(0, 1))
        bars.add_column(justify="right", min_width=16)
        bars.add_column(width=42)
        bars.add_column(justify="right")
        scale = max((abs(row[c]) for c in order), default=0.0) or 1.0
        for c in order:
            v = row[c]
            n = round(40 * abs(v) / scale)
            bars.add_row(
                state.concepts[c], Text("█" * n, style="red" if v >= 0 else "blue"), f"{v:+.2f}"
            )
        recent = Table("token", "top concept", "value", box=None, padding=(0, 2))
        for token, raw, z in list(state.recent):
            vals = (z if state.mode == "z" and z is not None else raw)[state.layer_index]
            c = max(range(len(vals)), key=vals.__getitem__)
            recent.add_row(repr(token), state.concepts[c], f"{vals[c]:+.2f}")
        body = Text(state.text[-600:] or "…")
    return Group(
        head,
        Panel(bars, title=f"top concepts · {view}"),
        Panel(recent, title="recent tokens"),
        Panel(body, title="completion"),
    )


def stream_events(
    url: str, body: dict[str, Any], headers: dict[str, str]
) -> Iterator[dict[str, Any]]:
    """The JSON objects of a server-sent event stream (until `[DONE]`)."""
    import httpx

    with httpx.stream("POST", url, json=body, headers=headers, timeout=None) as resp:
        if resp.status_code != 200:
            resp.read()
            raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:300]}")
        for line in resp.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            yield json.loads(data)


def _consume(state: WatchState, url: str, body: dict[str, Any], headers: dict[str, str]) -> None:
    try:
        state.status = "streaming"
        for chunk in stream_events(url, body, headers):
            if "error" in chunk:
                state.status = f"error: {chunk['error'].get('message')}"
                return
            for choice in chunk.get("choices", []):
                if "readout" not in choice:
                    continue
                text = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                state.add_token(
                    choice.get("token", ""),
                    text,
                    choice["readout"],
                    choice.get("readout_z"),
                    choice.get("readout_combined"),
                )
                if choice.get("finish_reason"):
                    state.status = f"done ({choice['finish_reason']})"
        if state.status == "streaming":
            state.status = "done"
    except Exception as exc:  # shown on screen: the view stays up for the user to read it
        state.status = f"error: {exc}"


@contextlib.contextmanager
def _cbreak() -> Iterator[bool]:
    """Single key presses without Enter while inside; yields whether stdin is a terminal."""
    if not sys.stdin.isatty():
        yield False
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _setup(args: argparse.Namespace) -> tuple[WatchState, str, dict[str, Any], dict[str, str]]:
    """Ask the server for its model and manifest; build the state and the request."""
    import httpx

    from amygdala.errors import ConfigError

    base = args.url.rstrip("/")
    key = os.environ.get(args.api_key_env)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        models = httpx.get(f"{base}/v1/models", headers=headers, timeout=10)
        manifest = httpx.get(f"{base}/v1/readout/manifest", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise ConfigError(
            f"cannot reach {base} ({exc}); start `amygdala serve` or pass --url"
        ) from None
    if models.status_code == 401:
        raise ConfigError(f"{base} wants an API key: put it in ${args.api_key_env}")
    if manifest.status_code == 404:
        raise ConfigError(f"{base} runs without vectors; restart it with --vectors")
    if models.status_code != 200 or manifest.status_code != 200:
        raise ConfigError(f"{base} answered HTTP {models.status_code}/{manifest.status_code}")
    man = manifest.json()
    layers = [int(x) for x in man["layers"]]
    state = WatchState(
        concepts=list(man["concepts"]),
        layers=layers,
        calibrated="calibration" in man,
        top=args.top,
        hysteresis=args.hysteresis,
        smooth=args.smooth,
    )
    state.recent = deque(maxlen=args.recent)
    state.mode = "z" if state.calibrated else "raw"
    state.combined = CombinedView.from_manifest(man)
    if args.layer == "combined":
        if state.combined_index is None:
            raise ConfigError(
                "--layer combined: the served manifest has no combined score; pick one of "
                f"the layers {layers}"
            )
        state.layer_index = state.combined_index
    elif args.layer is not None:
        if args.layer not in layers:
            raise ConfigError(f"--layer {args.layer} is not served; the layers are {layers}")
        state.layer_index = layers.index(args.layer)
    else:
        default = state.combined_index
        state.layer_index = len(layers) - 1 if default is None else default
    model = models.json()["data"][0]["id"]
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": args.max_tokens,
        "stream": True,
        "temperature": args.temperature,
    }
    if args.seed is not None:
        body["seed"] = args.seed
    if args.chat:
        body["messages"] = [{"role": "user", "content": args.prompt}]
        url = f"{base}/v1/chat/completions"
    else:
        body["prompt"] = args.prompt
        url = f"{base}/v1/completions"
    return state, url, body, headers


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from amygdala.errors import ConfigError

    if args.top < 1 or args.recent < 1 or args.max_tokens < 1:
        raise ConfigError("--top, --recent and --max-tokens must be at least 1")
    if not 0 <= args.smooth < 1 or args.hysteresis < 0:
        raise ConfigError("--smooth must be in 0..0.99 and --hysteresis at least 0")
    state, url, body, headers = _setup(args)
    worker = threading.Thread(target=_consume, args=(state, url, body, headers), daemon=True)
    worker.start()
    title = f"amygdala watch · {body['model']}"
    console = Console()
    with (
        _cbreak() as keys,
        Live(
            render(state, title), console=console, screen=keys, auto_refresh=False, transient=False
        ) as live,
    ):
        while True:
            if keys:
                ready = select.select([sys.stdin], [], [], 0.1)[0]
                key = os.read(sys.stdin.fileno(), 1).decode(errors="ignore") if ready else ""
                if key and not state.key(key):
                    break
            else:
                worker.join(0.1)
            live.update(render(state, title), refresh=True)
            if not worker.is_alive() and (args.exit_when_done or not keys):
                break
    return 1 if state.status.startswith("error") else 0
