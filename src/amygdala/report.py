"""A self-contained HTML quality report, rendered from quality.json.

Everything is in one file: plots are inline SVG built here (no JavaScript, no fonts,
stylesheets or images fetched from anywhere), so the report opens offline, in a mail
attachment, or from a CI artifact. `render_html(quality_json)` needs nothing but the
quality.json document, so a report can be re-rendered later without the model.

Sections: a summary with the recommended layers and the mean AUROC per layer, the
held-out AUROC heatmap concept × layer, the cross-talk (cosine) matrix, a 2-D PCA map of
the concept vectors, a table of counts and per-concept numbers, and the warnings.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amygdala import _defaults
from amygdala._defaults import DType
from amygdala._io import Input, Output, atomic_write_files, check_outputs, json_bytes
from amygdala.errors import ConfigError, CorpusError
from amygdala.evaluate import Quality, Thresholds, coherence_rows, evaluate, quality_info

if TYPE_CHECKING:
    import numpy as np

    from amygdala.activations import CaptureSettings
    from amygdala.artifact import Manifest
    from amygdala.corpus import Corpus
    from amygdala.models import LoadedModel

CELL = 18  # heatmap cell size in px
LABEL_W = 150  # room for concept names
MAX_MATRIX_CELLS = 40000  # above this, only the best layer's cross-talk matrix is drawn


def report_paths(out_dir: Path) -> tuple[Path, Path]:
    """`out_dir/quality.json` and `out_dir/report.html`."""
    return Path(out_dir) / "quality.json", Path(out_dir) / "report.html"


def write_report(quality: Quality, out_dir: Path) -> tuple[Path, Path]:
    """Write `out_dir/quality.json` and `out_dir/report.html`, both or neither (an error
    while writing leaves the old pair)."""
    doc = quality.to_json()
    json_path, html_path = report_paths(out_dir)
    atomic_write_files([(json_path, json_bytes(doc)), (html_path, render_html(doc).encode())])
    return json_path, html_path


def check_report_outputs(config: ReportConfig) -> None:
    """Fail before any capture when quality.json or report.html cannot be written, or would
    overwrite one of the report's inputs (`amygdala._io.check_outputs`)."""
    from amygdala.artifact import default_manifest_path
    from amygdala.store import default_cache_dir

    outputs = [Output(config.output_dir, "--output-dir", "dir")]
    outputs += [Output(p, "--output-dir") for p in report_paths(config.output_dir)]
    if not config.no_cache:
        cache = config.cache_dir or default_cache_dir()
        outputs.append(Output(cache, "--cache-dir", "dir", "or pass --no-cache"))
    manifest = config.manifest or default_manifest_path(config.vectors)
    inputs = [
        Input(config.vectors, "the vectors (--vectors)"),
        Input(manifest, "the manifest (--manifest)"),
        Input(config.training_data_dir, "the training data (--training-data-dir)"),
    ]
    check_outputs(outputs, inputs)


@dataclass(frozen=True)
class ReportConfig:
    """What `amygdala report` needs; capture settings default to the artifact's manifest."""

    vectors: Path  # readout.safetensors
    training_data_dir: Path  # the training data, with its held-out split
    output_dir: Path  # where quality.json and report.html go
    manifest: Path | None = None  # by default the vectors path with .json
    model: str | None = None  # by default the manifest's model
    dtype: DType | None = None  # by default the manifest's model dtype (reuses stored activations)
    device: str | None = None
    revision: str | None = None  # by default the manifest's
    blocks_path: str | None = None  # by default the manifest's
    trust_remote_code: bool = False
    batch_size: int = _defaults.BATCH_SIZE  # texts per forward pass
    cache_dir: Path | None = None  # the store training used: its activations are reused
    no_cache: bool = False
    progress: bool = True
    max_coherence: int = _defaults.MAX_COHERENCE  # train positives per concept for coherence
    thresholds: Thresholds = field(default_factory=Thresholds)


_DTYPE_FLAGS: dict[str, DType] = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


@dataclass(frozen=True)
class ReportResult:
    """What `report_artifact` wrote, and what the activation store had to skip."""

    json_path: Path  # quality.json
    html_path: Path  # report.html
    quality: Quality
    store_problems: tuple[str, ...] = ()  # unreadable shards skipped, leftovers removed


def report_artifact(config: ReportConfig, lm: LoadedModel | None = None) -> ReportResult:
    """Evaluate an artifact on its training data's held-out split and write the report.

    Texts are captured with the artifact's own settings (model, layers, pooling, max
    length, dtype), so a report after `amygdala train` on the same `--cache-dir` reads
    every activation from the store and never runs the model.

    Example:
        report_artifact(ReportConfig(Path("out/readout.safetensors"), Path("data"),
                                     Path("out/")))
    """
    from amygdala.activations import Activations, capture_missing, open_store
    from amygdala.artifact import load_artifact
    from amygdala.store import text_hash

    check_report_outputs(config)
    art = load_artifact(config.vectors, config.manifest)
    corpus = _heldout_corpus(config.training_data_dir, art.concepts)
    settings = capture_settings(config, art.meta)
    if lm is None:
        lm = settings.load()
    if lm.hidden_size != art.meta.hidden_size or max(art.layers) >= lm.n_layers:
        raise ConfigError(
            f"{config.vectors} was trained for hidden size "
            f"{art.meta.hidden_size} and layers {art.layers}, but "
            f"{settings.model} has hidden size {lm.hidden_size} and "
            f"{lm.n_layers} blocks; pass the artifact's model with --model"
        )
    heldout = [i for i in range(len(corpus.texts)) if (corpus.heldout[i] != 0).any()]
    picks = coherence_rows(corpus.train, config.max_coherence)
    needed = sorted(set(heldout) | {r for rows in picks for r in rows})
    with open_store(settings, settings.fingerprint(lm, art.layers)) as store:
        acts = Activations(store, [text_hash(t) for t in corpus.texts])
        capture_missing(lm, corpus.texts, acts, art.layers, settings, needed)
        quality = evaluate(
            art.stacked(),
            art.concepts,
            art.layers,
            acts,
            corpus.train,
            corpus.heldout,
            thresholds=config.thresholds,
            max_coherence=config.max_coherence,
            info=quality_info(art.meta, config.vectors),
            combined_weights=combined_weights(art.meta),
        )
        problems = tuple(store.problems)
    json_path, html_path = write_report(quality, config.output_dir)
    return ReportResult(json_path, html_path, quality, problems)


def combined_weights(manifest: Manifest) -> np.ndarray | None:
    """The manifest's combined-score weights `[L, C]` (numpy), or None without them."""
    import numpy as np

    entry = manifest.combined
    return None if entry is None else np.asarray(entry["weights"], dtype=np.float64)


def _heldout_corpus(path: Path, concepts: list[str]) -> Corpus:
    from amygdala.corpus import load_corpus

    corpus = load_corpus(path)
    missing = [c for c in concepts if c not in corpus.concepts]
    if missing:
        raise CorpusError(
            f"{path} has no examples of {missing}, which the artifact holds; "
            "pass the training data the vectors were trained on"
        )
    corpus = corpus.select(concepts)
    if not (corpus.heldout != 0).any():
        raise CorpusError(
            f'{path} has no held-out rows (split "heldout"); evaluation '
            "needs texts the vectors were not trained on: extract the training "
            'data with a held-out share, or add rows with "split": "heldout"'
        )
    return corpus


def capture_settings(config: ReportConfig, manifest: Manifest) -> CaptureSettings:
    """The artifact's capture settings (model, pooling, pool start, max length, dtype, as
    training used them), with the report's own overrides and its store."""
    from amygdala.activations import CaptureSettings

    model = config.model or manifest.model
    if not model:
        raise ConfigError(f"{config.vectors}: the manifest names no model; pass --model")
    dtype = config.dtype or _DTYPE_FLAGS.get(str(manifest.model_dtype), "auto")
    same = model == manifest.model  # the manifest's revision and blocks fit its model
    return CaptureSettings(
        model=model,
        pooling=manifest.capture_pooling,
        pool_start=manifest.capture_pool_start,
        max_length=manifest.capture_max_length,
        batch_size=config.batch_size,
        dtype=dtype,
        revision=config.revision or (manifest.model_revision if same else None),
        blocks_path=config.blocks_path or (manifest.blocks_path if same else None),
        trust_remote_code=config.trust_remote_code,
        device=config.device,
        progress=config.progress,
        cache_dir=config.cache_dir,
        no_cache=config.no_cache,
    )


def _esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> str:
    t = min(1.0, max(0.0, t))
    r, g, bl = (round(a[i] + (b[i] - a[i]) * t) for i in range(3))
    return f"#{r:02x}{g:02x}{bl:02x}"


WHITE, GREEN, RED, BLUE, GREY = (
    (255, 255, 255),
    (0, 109, 44),
    (203, 24, 29),
    (33, 102, 172),
    (220, 220, 220),
)


def auroc_color(x: float | None) -> str:
    """0.5 is white, 1.0 dark green, below 0.5 toward red (a vector that reads backwards)."""
    if x is None:
        return _mix(GREY, GREY, 0)
    return _mix(WHITE, GREEN, (x - 0.5) / 0.5) if x >= 0.5 else _mix(WHITE, RED, (0.5 - x) / 0.5)


def cosine_color(x: float | None) -> str:
    """−1 blue, 0 white, +1 red."""
    if x is None:
        return _mix(GREY, GREY, 0)
    return _mix(WHITE, RED, x) if x >= 0 else _mix(WHITE, BLUE, -x)


def heatmap_svg(
    rows: Sequence[str],
    cols: Sequence[str],
    values: Sequence[Sequence[float | None]],
    color: Callable[[float | None], str],
    *,
    css_class: str,
    title: str,
    show_values: bool = True,
) -> str:
    """An SVG heatmap: `values[i][j]` for row label i and column label j, with tooltips."""
    longest = max((len(c) for c in cols), default=1)
    top = 14 + 6 * longest  # column labels are rotated by 60°
    width, height = LABEL_W + CELL * len(cols) + 4 + 4 * longest, top + CELL * len(rows) + 4
    parts = [
        f'<svg class="{css_class}" width="{width}" '
        f'height="{height}" role="img" aria-label="{_esc(title)}">'
    ]
    for j, col in enumerate(cols):
        x = LABEL_W + CELL * j + CELL / 2
        parts.append(
            f'<text class="col" x="{x}" y="{top - 4}" transform="rotate(-60 {x} '
            f'{top - 4})">{_esc(col)}</text>'
        )
    for i, row in enumerate(rows):
        y = top + CELL * i
        parts.append(
            f'<text class="row" x="{LABEL_W - 4}" y="{y + CELL * 0.7}" '
            f'text-anchor="end">{_esc(row)}</text>'
        )
        for j, col in enumerate(cols):
            v = values[i][j]
            parts.append(
                f'<rect x="{LABEL_W + CELL * j}" y="{y}" width="{CELL}" '
                f'height="{CELL}" fill="{color(v)}"><title>{_esc(row)} × '
                f"{_esc(col)}: {_fmt(v)}</title></rect>"
            )
            if show_values and v is not None:
                parts.append(
                    f'<text class="val" x="{LABEL_W + CELL * j + CELL / 2}" '
                    f'y="{y + CELL * 0.68}" text-anchor="middle">'
                    f"{round(v * 100):d}</text>"
                )
    parts.append("</svg>")
    return "".join(parts)


def scatter_svg(
    labels: Sequence[str], coords: Sequence[Sequence[float | None]], *, title: str, size: int = 460
) -> str:
    """A labeled 2-D scatter of the concept vectors' PCA coordinates."""
    pts = [(float(x or 0.0), float(y or 0.0)) for x, y in coords]
    span = max([abs(v) for p in pts for v in p] + [1e-12])
    pad = 40

    def pos(v: float, flip: bool = False) -> float:
        t = (v / span + 1) / 2
        return pad + (1 - t if flip else t) * (size - 2 * pad)

    parts = [
        f'<svg class="pca-map" width="{size}" '
        f'height="{size}" role="img" aria-label="{_esc(title)}">',
        f'<line x1="{pad}" y1="{size / 2}" x2="{size - pad}" y2="{size / 2}" class="axis"/>',
        f'<line x1="{size / 2}" y1="{pad}" x2="{size / 2}" y2="{size - pad}" class="axis"/>',
    ]
    for name, (x, y) in zip(labels, pts):
        cx, cy = pos(x), pos(y, flip=True)
        parts.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4"><title>{_esc(name)}</title>'
            f'</circle><text class="pt" x="{cx + 6:.1f}" y="{cy + 4:.1f}">'
            f"{_esc(name)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def bars_svg(
    labels: Sequence[str], values: Sequence[float | None], highlight: Sequence[str]
) -> str:
    """Horizontal bars of the mean AUROC per layer (0.5 … 1.0), recommended layers bold;
    a label that is not a layer index (`combined`) is shown as it is."""
    width, bar_h = 420, 20
    parts = [
        f'<svg class="layer-bars" width="{width}" '
        f'height="{bar_h * len(labels) + 8}" role="img" aria-label="mean AUROC per layer">'
    ]
    for i, (name, v) in enumerate(zip(labels, values)):
        y = 4 + i * bar_h
        length = 0 if v is None else max(0.0, (v - 0.5) / 0.5) * (width - 160)
        weight = ' font-weight="bold"' if name in highlight else ""
        parts.append(
            f'<text x="70" y="{y + 14}" text-anchor="end"{weight}>'
            f"{'layer ' if name.isdigit() else ''}{_esc(name)}"
            f'</text><rect x="76" y="{y + 3}" width="{length:.1f}" height="{bar_h - 6}"'
            f' fill="{auroc_color(v)}" stroke="#555"/><text x="{80 + length:.1f}" '
            f'y="{y + 14}">{_fmt(v)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border: 1px solid #ddd; padding: 3px 6px; text-align: right; }
th { background: #f4f4f4; } td.name { text-align: left; font-weight: 600; }
svg text { font: 11px system-ui, sans-serif; fill: #222; }
svg text.val { font-size: 8px; fill: #111; } svg .axis { stroke: #bbb; }
svg circle { fill: #2166ac; } .warn li { color: #8a1c1c; } .meta td { text-align: left; }
.scroll { overflow-x: auto; } details { margin: .5em 0; }
"""


def render_html(doc: dict[str, Any]) -> str:
    """The whole report page from a quality.json document."""
    concepts = doc["concepts"]
    layers = [str(x) for x in doc["layers"]]
    means = doc["mean_auroc_per_layer"]
    best_mean = max(range(len(layers)), key=lambda j: -1 if means[j] is None else means[j])
    sections = [
        _summary(doc, layers, best_mean),
        _auroc_section(doc, layers),
        _crosstalk_section(doc, layers, best_mean),
        _pca_section(doc, layers, best_mean),
        _table_section(doc),
        _warnings_section(doc),
    ]
    title = f"amygdala quality report — {len(concepts)} concepts × {len(layers)} layers"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{_esc(title)}</h1>" + "".join(sections) + "</body></html>\n"
    )


def _summary(doc: dict[str, Any], layers: list[str], best_mean: int) -> str:
    meta = [
        (k, doc[k])
        for k in ("model", "method", "pooling", "training_data", "vectors")
        if doc.get(k) is not None
    ]
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in meta)
    rec = [str(x) for x in doc["recommended_layers"]]
    return (
        f'<section id="summary"><table class="meta">{rows}</table>'
        f"<p>Recommended layers: <b>{_esc(', '.join(rec) or 'none')}</b> "
        f"({_esc(doc['recommendation_rule'])}). Best layer on average: "
        f"<b>{_esc(layers[best_mean]) if layers else '–'}</b>.</p>"
        f"<h2>Mean held-out AUROC per layer</h2>{_combined_note(doc)}"
        f"{bars_svg(*_with_combined(layers, doc['mean_auroc_per_layer'], doc), rec)}</section>"
    )


def _with_combined(
    layers: list[str], values: list[Any], doc: dict[str, Any]
) -> tuple[list[str], list[Any]]:
    """Layer labels and values, plus `combined` when the report has the combined score."""
    if "mean_combined_auroc" not in doc:
        return layers, values
    return [*layers, "combined"], [*values, doc["mean_combined_auroc"]]


def _combined_note(doc: dict[str, Any]) -> str:
    if "mean_combined_auroc" not in doc:
        return ""
    return (
        "<p>combined: the manifest's combined score over all layers (Σ weights · "
        "projection, weights fitted on the training rows only).</p>"
    )


def _auroc_section(doc: dict[str, Any], layers: list[str]) -> str:
    per = doc["per_concept"]
    cols, values = [f"layer {x}" for x in layers], [per[c]["auroc"] for c in doc["concepts"]]
    if "mean_combined_auroc" in doc:
        cols.append("combined")
        values = [[*v, per[c].get("combined_auroc")] for v, c in zip(values, doc["concepts"])]
    svg = heatmap_svg(
        doc["concepts"],
        cols,
        values,
        auroc_color,
        css_class="auroc-heatmap",
        title="held-out AUROC, concept × layer",
    )
    return (
        '<section id="auroc"><h2>Held-out AUROC, concept × layer</h2><p>Projection of '
        "held-out positives vs held-out negatives; numbers are AUROC × 100; white = chance "
        f'(0.5), green = separates, red = reads backwards.</p><div class="scroll">{svg}'
        "</div></section>"
    )


def _crosstalk_section(doc: dict[str, Any], layers: list[str], best_mean: int) -> str:
    n = len(doc["concepts"])
    show = range(len(layers)) if n * n * len(layers) <= MAX_MATRIX_CELLS else [best_mean]
    blocks = []
    for j in show:
        svg = heatmap_svg(
            doc["concepts"],
            doc["concepts"],
            doc["cosine"][j],
            cosine_color,
            css_class="crosstalk-matrix",
            title=f"cosine between concepts, layer {layers[j]}",
            show_values=n <= 30,
        )
        opened = " open" if j == best_mean else ""
        blocks.append(
            f"<details{opened}><summary>layer {_esc(layers[j])}</summary>"
            f'<div class="scroll">{svg}</div></details>'
        )
    return (
        '<section id="crosstalk"><h2>Cross-talk: cosine between concept vectors</h2>'
        "<p>Red = vectors point the same way (the readouts move together), blue = "
        "opposite. Ridge R² per concept (λ = 0.01) is in the table below; above 0.9 the "
        "other concepts reproduce the vector and it is flagged redundant.</p>"
        + "".join(blocks)
        + "</section>"
    )


def _pca_section(doc: dict[str, Any], layers: list[str], best_mean: int) -> str:
    blocks = []
    for j, entry in enumerate(doc["pca_map"]):
        ex = entry["explained"]
        svg = scatter_svg(
            doc["concepts"],
            entry["coords"],
            title=f"PCA of concept vectors, layer {entry['layer']}",
        )
        opened = " open" if j == best_mean else ""
        blocks.append(
            f"<details{opened}><summary>layer {_esc(entry['layer'])} (PC1 "
            f"{_fmt(ex[0])}, PC2 {_fmt(ex[1])} of the variance)</summary>{svg}"
            "</details>"
        )
    return (
        '<section id="pca"><h2>2-D PCA map of the concept vectors</h2><p>Concepts close '
        "together have similar directions.</p>" + "".join(blocks) + "</section>"
    )


def _table_section(doc: dict[str, Any]) -> str:
    combined = "mean_combined_auroc" in doc
    head = (
        "<tr><th>concept</th><th>train +</th><th>train −</th><th>held-out +</th>"
        "<th>held-out −</th><th>best layer</th><th>AUROC</th>"
        + ("<th>combined AUROC</th>" if combined else "")
        + "<th>Cohen's d</th><th>coherence</th><th>ridge R²</th><th>nearest</th></tr>"
    )
    rows = []
    layers = doc["layers"]
    for c in doc["concepts"]:
        p = doc["per_concept"][c]
        n = p["counts"]
        j = layers.index(p["best_layer"]) if p["best_layer"] is not None else None

        def pick(xs: list[Any], j: int | None = j) -> Any:
            return None if j is None else xs[j]

        ct = pick(p["crosstalk"])
        near = (
            ", ".join(f"{x['concept']} ({_fmt(x['cosine'], 2)})" for x in ct["nearest"])
            if ct
            else ""
        )
        rows.append(
            f'<tr><td class="name">{_esc(c)}</td><td>{n["train_positive"]}</td>'
            f"<td>{n['train_negative']}</td><td>{n['heldout_positive']}</td>"
            f"<td>{n['heldout_negative']}</td><td>{_esc(p['best_layer'])}</td>"
            f"<td>{_fmt(p['best_auroc'])}</td>"
            + (f"<td>{_fmt(p.get('combined_auroc'))}</td>" if combined else "")
            + f"<td>{_fmt(pick(p['cohens_d']), 2)}</td>"
            f"<td>{_fmt(pick(p['coherence']))}</td>"
            f"<td>{_fmt(ct['r2'] if ct else None)}</td><td>{_esc(near)}</td></tr>"
        )
    return (
        '<section id="concepts"><h2>Counts and numbers per concept (at its best layer)'
        f'</h2><div class="scroll"><table class="counts">{head}{"".join(rows)}</table>'
        "</div></section>"
    )


def _warnings_section(doc: dict[str, Any]) -> str:
    items = "".join(f"<li>{_esc(w)}</li>" for w in doc["warnings"])
    body = f'<ul class="warn">{items}</ul>' if items else "<p>No warnings.</p>"
    return f'<section id="warnings"><h2>Warnings ({len(doc["warnings"])})</h2>{body}</section>'
