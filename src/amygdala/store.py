"""On-disk store of pooled activations, keyed by text: the cache that makes training
resumable and makes reruns with new thresholds, emotions or methods skip the model.

Layout: `<cache-dir>/<fingerprint-id>/fingerprint.json` plus `shards/*.safetensors`.
The fingerprint is everything that changes a pooled activation — model id, revision,
config and weight-file identity, layers, pooling, pool start, max length, compute
dtype — so a store is only ever reused for identical capture settings. Each shard holds
one captured batch: tensor `acts` `[n, n_layers, hidden]` (fp32), optionally `tokens`
`[n, n_layers, k, hidden]` (bf16: a few single tokens per text, for per-token
calibration), and the sha256 of each text in its metadata. Shards are written atomically
and named by the hash of their texts, so a run killed with SIGKILL leaves only complete
shards (plus at most a `.tmp-*` file it was writing), and the same batch captured again
lands in the same file.

Every process using a store holds a shared lock on its `.lock` file; the first one to
open a store that no other process holds removes the `.tmp-*` files that killed runs left.
Nothing here prints: what a store skipped or removed is in `ActivationStore.problems`
(`amygdala.activations.open_store` logs it; the stages return it in their results).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from amygdala._io import atomic_write_bytes, atomic_write_json, ensure_dir, naming

STORE_FORMAT = "amygdala-activations/2"  # /2: shards carry sampled single tokens
CACHE_HINT = "or pass another --cache-dir, or --no-cache"  # appended to write errors


def text_hash(text: str) -> str:
    """The key of a text in the store: sha256 of its UTF-8 bytes (hex)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    """A short stable name for a fingerprint (sha256 of its canonical JSON)."""
    blob = json.dumps(fingerprint, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


@dataclass(frozen=True)
class _Where:
    shard: str
    row: int


class ActivationStore:
    """Pooled activations of texts under one fingerprint (see the module docstring).

    Example:
        store = ActivationStore(Path("~/.cache/amygdala/activations"), fingerprint)
        missing = store.missing(hashes)
        store.write(batch_hashes, acts)            # after capturing them
        for positions, acts in store.iter_rows(hashes): ...
    """

    def __init__(self, root: Path, fingerprint: dict[str, Any]) -> None:
        self.fingerprint = {"format": STORE_FORMAT, **fingerprint}
        self.path = Path(root).expanduser() / fingerprint_id(self.fingerprint)
        self.shards = self.path / "shards"
        ensure_dir(self.shards, CACHE_HINT)
        self.problems: list[str] = []  # unreadable shards, skipped (their texts recaptured)
        self._hold()
        meta = self.path / "fingerprint.json"
        if not meta.exists():
            atomic_write_json(meta, self.fingerprint)
        self._index: dict[str, _Where] = {}
        for shard in sorted(self.shards.glob("*.safetensors")):
            self._index_shard(shard)

    def _hold(self) -> None:
        """Take this store's shared lock for the life of the object; when no other process
        holds it, first remove the `.tmp-*` files that killed runs left behind."""
        try:
            import fcntl
        except ImportError:  # no flock (Windows): leftovers stay, and are harmless
            return
        with naming(self.path / ".lock", CACHE_HINT):
            fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        weakref.finalize(self, os.close, fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another process is using the store: its .tmp-* files are live
            pass
        else:
            self._remove_leftovers()
        fcntl.flock(fd, fcntl.LOCK_SH)

    def _remove_leftovers(self) -> None:
        """Delete `.tmp-*` files (unfinished shard or fingerprint writes) of dead runs."""
        removed = 0
        for folder in (self.path, self.shards):
            for leftover in folder.glob(".tmp-*"):
                with contextlib.suppress(OSError):
                    leftover.unlink()
                    removed += 1
        if removed:
            self.problems.append(
                f"removed {removed} unfinished temporary file(s) left by an interrupted run"
            )

    def _index_shard(self, shard: Path) -> None:
        from safetensors import safe_open

        try:
            with safe_open(str(shard), "pt") as fh:
                hashes = json.loads(fh.metadata()["hashes"])
                n_rows = fh.get_slice("acts").get_shape()[0]
            if len(hashes) != n_rows:
                raise ValueError(f"{len(hashes)} hashes for {n_rows} rows")
        except Exception as exc:  # any unreadable shard is skipped and reported, never fatal
            self.problems.append(
                f"{shard.name}: unreadable ({type(exc).__name__}: {exc}); "
                "its texts will be captured again"
            )
            return
        for row, h in enumerate(hashes):
            self._index.setdefault(h, _Where(shard.name, row))

    def __contains__(self, text_hash: str) -> bool:
        return text_hash in self._index

    def __len__(self) -> int:
        return len(self._index)

    def missing(self, hashes: Sequence[str]) -> list[int]:
        """Positions in `hashes` of texts the store does not hold."""
        return [i for i, h in enumerate(hashes) if h not in self._index]

    def write(self, hashes: Sequence[str], acts: Tensor, tokens: Tensor | None = None) -> Path:
        """Store one captured batch atomically; returns the shard path."""
        from safetensors.torch import save

        if acts.shape[0] != len(hashes) or (tokens is not None and tokens.shape[0] != len(hashes)):
            raise ValueError(f"{len(hashes)} hashes for acts of shape {tuple(acts.shape)}")
        name = hashlib.sha256("".join(hashes).encode()).hexdigest()[:24] + ".safetensors"
        tensors = {"acts": acts.detach().to("cpu", torch.float32).contiguous()}
        if tokens is not None:
            tensors["tokens"] = tokens.detach().to("cpu", torch.bfloat16).contiguous()
        blob = save(tensors, metadata={"hashes": json.dumps(list(hashes))})
        path = self.shards / name
        atomic_write_bytes(path, blob, hint=CACHE_HINT)
        for row, h in enumerate(hashes):
            self._index.setdefault(h, _Where(name, row))
        return path

    def iter_rows(
        self, hashes: Sequence[str], chunk: int = 256, *, key: str = "acts"
    ) -> Iterator[tuple[list[int], Tensor]]:
        """Yield `(positions, rows of tensor key)` over `hashes` in their order, `chunk`
        rows at a time (`key`: `acts`, or `tokens` for the sampled single tokens).

        The order depends only on `hashes`, never on how the shards happen to be laid
        out, so sums accumulated from here are bitwise reproducible.
        """
        from safetensors import safe_open

        handles: OrderedDict[str, Any] = OrderedDict()
        try:
            for start in range(0, len(hashes), chunk):
                positions = list(range(start, min(start + chunk, len(hashes))))
                rows = []
                for i in positions:
                    where = self._index.get(hashes[i])
                    if where is None:
                        raise KeyError(f"text {hashes[i][:12]}… is not in the activation store")
                    if where.shard not in handles:
                        if len(handles) >= 64:
                            handles.popitem(last=False)
                        handles[where.shard] = safe_open(str(self.shards / where.shard), "pt")
                    handles.move_to_end(where.shard)
                    rows.append(handles[where.shard].get_slice(key)[where.row])
                yield positions, torch.stack(rows).to(torch.float32)
        finally:
            handles.clear()


def default_cache_dir() -> Path:
    """`$AMYGDALA_CACHE_DIR`, else `$XDG_CACHE_HOME/amygdala/activations` (~/.cache/…)."""
    import os

    if os.environ.get("AMYGDALA_CACHE_DIR"):
        return Path(os.environ["AMYGDALA_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "amygdala" / "activations"


def model_identity(model_dir: str) -> dict[str, Any]:
    """What identifies a model's weights for the cache: its config and weight files.

    For a local directory: sha256 of config.json and the names and sizes of the
    weight files. For a Hub id: the id (the revision is part of the fingerprint).
    """
    path = Path(model_dir)
    if not path.is_dir():
        return {"hub_id": model_dir}
    config = path / "config.json"
    ident: dict[str, Any] = {
        "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest()
        if config.exists()
        else None,
        "weights": sorted(
            (p.name, p.stat().st_size)
            for p in path.iterdir()
            if p.suffix in (".safetensors", ".bin", ".pt", ".gguf")
        ),
    }
    return ident
