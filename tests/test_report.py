"""The HTML report renders in headless Chromium, offline, with every plot in the page."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from amygdala.evaluate import evaluate
from amygdala.report import render_html, write_report

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="Debian chromium not installed (apt-get install chromium; .ci/run installs it)",
)
# Requests Chromium makes for itself (updates, time, sign-in) whatever the page holds.
BROWSER_HOSTS = re.compile(
    r"(^|[/.])(google\.com|googleapis\.com|gstatic\.com|gvt1\.com)"
    r"(:\d+)?($|/)"
)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from test_evaluate import NAMES, MemorySource, dataset

    acts, train, heldout, vectors = dataset()
    q = evaluate(
        vectors,
        NAMES,
        [2, 5, 7],
        MemorySource(acts),
        train,
        heldout,
        info={"model": "synthetic <model> & co", "method": "whitened"},
    )
    out = tmp_path_factory.mktemp("report")
    json_path, html_path = write_report(q, out)
    return html_path, json.loads(json_path.read_text())


@pytest.fixture(scope="module")
def combined_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    import numpy as np

    from test_evaluate import NAMES, MemorySource, dataset

    acts, train, heldout, vectors = dataset()
    q = evaluate(
        vectors,
        NAMES,
        [2, 5, 7],
        MemorySource(acts),
        train,
        heldout,
        combined_weights=np.ones((3, 4)),
    )
    json_path, html_path = write_report(q, tmp_path_factory.mktemp("report-combined"))
    return html_path, json.loads(json_path.read_text())


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self.send_response(404)
        self.end_headers()

    do_CONNECT = do_POST = do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[tuple[int, list[str]]]:
    """An HTTP proxy that records every request Chromium sends through it."""
    hits: list[str] = []
    handler = type("Recorder", (_Recorder,), {"hits": hits})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], hits
    finally:
        server.shutdown()
        server.server_close()


def chromium(page: Path, tmp: Path, port: int, *extra: str) -> str:
    """Run headless Chromium on `page` with all traffic forced through the proxy."""
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp / 'profile'}",
            f"--proxy-server=http://127.0.0.1:{port}",
            "--proxy-bypass-list=<-loopback>",
            *extra,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def page_requests(hits: list[str]) -> list[str]:
    return [h for h in hits if not BROWSER_HOSTS.search(h)]


@needs_chromium
def test_report_renders_every_plot_without_network(
    report: tuple[Path, dict], tmp_path: Path, proxy: tuple[int, list[str]]
) -> None:
    html_path, doc = report
    port, hits = proxy
    # positive control: the proxy does see a page's own requests
    control = tmp_path / "control.html"
    control.write_text('<html><body><img src="http://amygdala-probe.invalid/x.png"></body></html>')
    chromium(control, tmp_path, port, "--dump-dom")
    assert any("amygdala-probe.invalid" in h for h in page_requests(hits))
    hits.clear()

    dom = chromium(html_path, tmp_path, port, "--dump-dom")
    assert page_requests(hits) == []
    n_concepts, n_layers = len(doc["concepts"]), len(doc["layers"])
    heatmap = re.search(r'<svg class="auroc-heatmap".*?</svg>', dom, re.S)
    assert heatmap and heatmap.group(0).count("<rect") == n_concepts * n_layers
    matrices = re.findall(r'<svg class="crosstalk-matrix".*?</svg>', dom, re.S)
    assert len(matrices) == n_layers
    assert all(m.count("<rect") == n_concepts * n_concepts for m in matrices)
    maps = re.findall(r'<svg class="pca-map".*?</svg>', dom, re.S)
    assert len(maps) == n_layers and all(m.count("<circle") == n_concepts for m in maps)
    assert re.search(r'<svg class="layer-bars"', dom)
    table = re.search(r'<table class="counts">.*?</table>', dom, re.S)
    assert table and table.group(0).count("<tr>") == n_concepts + 1
    assert "synthetic &lt;model&gt; &amp; co" in dom  # text is escaped, never markup
    for warning in doc["warnings"]:
        assert warning.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in dom


@needs_chromium
def test_report_paints(
    report: tuple[Path, dict], tmp_path: Path, proxy: tuple[int, list[str]]
) -> None:
    html_path, _ = report
    port, hits = proxy
    shot = tmp_path / "shot.png"
    chromium(html_path, tmp_path, port, f"--screenshot={shot}", "--window-size=1200,3000")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1200, 3000)
    assert len(data) > 30_000  # a blank page compresses to a few kB; plots do not
    assert page_requests(hits) == []


def test_report_is_self_contained(report: tuple[Path, dict]) -> None:
    """No URL, script, stylesheet link, font or image reference anywhere in the file."""
    html = report[0].read_text()
    for pattern in (r"https?:", r"<script", r"<link", r"<img", r"@import", r"url\(", r"src="):
        assert not re.search(pattern, html, re.I), pattern
    assert html.count("<svg") >= 4


@needs_chromium
def test_report_shows_the_combined_score_beside_the_layers(
    combined_report: tuple[Path, dict], tmp_path: Path, proxy: tuple[int, list[str]]
) -> None:
    html_path, doc = combined_report
    port, hits = proxy
    dom = chromium(html_path, tmp_path, port, "--dump-dom")
    assert page_requests(hits) == []
    n_concepts, n_layers = len(doc["concepts"]), len(doc["layers"])
    heatmap = re.search(r'<svg class="auroc-heatmap".*?</svg>', dom, re.S)
    assert heatmap and heatmap.group(0).count("<rect") == n_concepts * (n_layers + 1)
    first = doc["concepts"][0]
    value = doc["per_concept"][first]["combined_auroc"]
    assert f"<title>{first} × combined: {value:.3f}</title>" in heatmap.group(0)
    bars = re.search(r'<svg class="layer-bars".*?</svg>', dom, re.S)
    assert bars and ">combined</text>" in bars.group(0)
    assert f"{doc['mean_combined_auroc']:.3f}" in bars.group(0)
    assert "<th>combined AUROC</th>" in dom


def test_render_html_survives_missing_values(report: tuple[Path, dict]) -> None:
    doc = json.loads(json.dumps(report[1]))
    first = doc["concepts"][0]
    doc["per_concept"][first]["auroc"] = [None] * len(doc["layers"])
    doc["per_concept"][first]["best_layer"] = None
    doc["per_concept"][first]["best_auroc"] = None
    html = render_html(doc)
    assert html.count('class="auroc-heatmap"') == 1 and ": –</title>" in html
