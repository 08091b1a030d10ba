"""Guarded, atomic writes: the one write path of every command.

Before the expensive work, `check_outputs` looks at every output path a run will write:
its folders exist or can be made, a file is wanted where a file is (never a directory,
a device, a FIFO or a socket: only regular files are ever replaced), each new name fits
the file system, a file can really be created there, the disk is not full, and no output
is one of the run's own inputs. A problem is one `OutputError` line naming the path, the
cause and the fix.

At the end, `atomic_write_files` stages every file as a temporary sibling (written,
fsynced), then renames each into place, so every path holds its old content or its new
content, never half of either, and a failure while staging changes nothing.
`atomic_directory` does the same for a directory replaced as a whole, and
`restore_on_failure` puts outputs back as they were when a command that writes several
of them fails half-way. Every `OSError` on the way becomes an `OutputError` naming the
path; a crash leaves at most a `.tmp-*` sibling, removed when Python still runs.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from amygdala.errors import OutputError

log = logging.getLogger(__name__)

OutputKind = Literal["file", "dir", "tree"]

MAX_INPUT_FILES = 20000  # files of an input folder compared with the outputs (by inode)

# errno -> what to do about it (appended to the cause)
_FIXES: dict[int, str] = {
    errno.ENOSPC: "free some space, or pass a path on another disk",
    errno.EROFS: "the file system is read-only; pass a path on a writable one",
    errno.EACCES: "pass a path you may write to",
    errno.EPERM: "pass a path you may write to",
    errno.ENAMETOOLONG: "pass a shorter name",
    errno.EFBIG: "the file is larger than this file system or `ulimit -f` allows",
    errno.EISDIR: "pass a file path",
    errno.ENOTDIR: "a folder on the way is a file; pass another path",
    errno.EEXIST: "a folder on the way is a file; pass another path",
}
if hasattr(errno, "EDQUOT"):
    _FIXES[errno.EDQUOT] = "your disk quota is used up; free some space or write elsewhere"


@dataclass(frozen=True)
class Output:
    """One path a run writes, as the user named it.

    `kind`: `file` (written whole), `dir` (a folder files are written into), or `tree`
    (a folder replaced as a whole, such as a training-data directory).
    """

    path: Path
    flag: str  # the flag that names it, e.g. "--output" or "--report"
    kind: OutputKind = "file"
    hint: str = ""  # another way out, appended to errors (e.g. "or pass --no-cache")


@dataclass(frozen=True)
class Input:
    """One path a run reads: a file, or a folder whose files are all inputs."""

    path: Path
    what: str  # what it is to the user, e.g. "the training data (--training-data-dir)"


def _is_temporary(name: str) -> bool:
    return Path(name).name.startswith((".tmp-", ".old-"))


def _fail(path: Path | str, cause: str, fix: str = "", hint: str = "") -> OutputError:
    tail = "; ".join(x for x in (fix, hint) if x)
    return OutputError(f"cannot write {path}: {cause}" + (f"; {tail}" if tail else ""))


def os_error(path: Path | str, exc: OSError, hint: str = "") -> OutputError:
    """`exc`, met while writing `path`, as one `OutputError` line: path, cause and fix."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    where = "" if exc.filename is None else os.fsdecode(exc.filename)
    if where and where != os.fsdecode(os.fspath(path)) and not _is_temporary(where):
        cause = f"{cause} ({where})"
    if exc.errno == errno.ENAMETOOLONG:
        longest = max((len(os.fsencode(part)) for part in Path(path).parts), default=0)
        with contextlib.suppress(OSError):
            folder, _ = _first_existing(Path(os.path.abspath(path)).parent)
            cause = (
                f"{cause} (a name of {longest} bytes; this file system allows {_name_max(folder)})"
            )
    return _fail(path, cause, _FIXES.get(exc.errno or 0, ""), hint)


@contextlib.contextmanager
def naming(path: Path | str, hint: str = "") -> Iterator[None]:
    """Turn any `OSError` in the block into an `OutputError` that names `path`."""
    try:
        yield
    except OSError as exc:
        raise os_error(path, exc, hint) from None


# --- checks before the expensive work ------------------------------------------------


def _kind_name(mode: int) -> str:
    for test, name in (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _stat(path: Path) -> os.stat_result | None:
    """`os.stat(path)`, or None when nothing is there (or a folder on the way is a file)."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:  # cannot exist; check_output says why
            return None
        raise


def refuse_special(path: Path, want: OutputKind = "file", label: str = "", hint: str = "") -> None:
    """Raise `OutputError` unless `path` is absent or the kind of thing `want` names (a
    regular file, or a directory for `dir` and `tree`): devices, FIFOs and sockets are
    never replaced. `label` names the path in the message (by default the path)."""
    label = label or str(path)
    try:
        st = _stat(path)
    except OSError as exc:
        raise os_error(label, exc, hint) from None
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        if want == "file":
            raise _fail(label, "it is a directory, and a file is needed", "pass a file path", hint)
        return
    if not stat.S_ISREG(st.st_mode):
        raise _fail(
            label,
            f"it is {_kind_name(st.st_mode)}, and amygdala only ever replaces regular files",
            "pass the path of a regular file" if want == "file" else "pass a directory path",
            hint,
        )
    if want != "file":
        raise _fail(label, "it is a file, and a directory is needed", "pass a directory path", hint)


def _first_existing(path: Path) -> tuple[Path, list[str]]:
    """The deepest existing ancestor of `path` (itself included) and the names below it."""
    missing: list[str] = []
    here = path
    while _stat(here) is None and here.parent != here:
        missing.append(here.name)
        here = here.parent
    return here, missing[::-1]


def _probe(folder: Path, label: str, hint: str) -> None:
    """Create and remove a file in `folder`: the only test that root, read-only mounts,
    /proc and /sys all answer truthfully."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-probe.", dir=folder)
    except OSError as exc:
        cause = exc.strerror or str(exc)
        raise _fail(
            label,
            f"cannot create a file in {folder} ({cause})",
            _FIXES.get(exc.errno or 0, "pass another path"),
            hint,
        ) from None
    os.close(fd)
    os.unlink(tmp)
    if hasattr(os, "statvfs"):
        try:
            vfs = os.statvfs(folder)
        except OSError:
            return
        free = vfs.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else vfs.f_bavail
        if vfs.f_blocks > 0 and free == 0:
            raise _fail(
                label, f"the file system holding {folder} is full", _FIXES[errno.ENOSPC], hint
            )


def _name_max(folder: Path) -> int:
    try:
        return int(os.statvfs(folder).f_namemax) if hasattr(os, "statvfs") else 255
    except OSError:
        return 255


def _abbrev(name: str, keep: int = 24) -> str:
    return name if len(name) <= 2 * keep else f"{name[:keep]}…{name[-keep:]}"


def _label(out: Output) -> str:
    return f"{out.path} ({out.flag})" if out.flag else str(out.path)


def check_output(out: Output) -> None:
    """Everything about one output path that can be known before writing it (module
    docstring); raises `OutputError`."""
    label = _label(out)
    with naming(label, out.hint):  # e.g. a folder on the way that may not be searched
        _check_output(Path(os.path.abspath(out.path)), out, label)


def _check_output(path: Path, out: Output, label: str) -> None:
    refuse_special(path, out.kind, label, out.hint)
    exists = _stat(path) is not None
    start = path if (exists and out.kind == "dir") else path.parent
    folder, missing = _first_existing(start)
    if not stat.S_ISDIR(os.stat(folder).st_mode):
        raise _fail(label, f"{folder} is a file, not a directory", "pass another path", out.hint)
    limit = _name_max(folder)
    for name in [*missing, *([] if exists else [path.name])]:
        size = len(os.fsencode(name))
        if size > limit:
            raise _fail(
                label,
                f"the name {_abbrev(name)!r} is {size} bytes long, and this file system "
                f"allows {limit}",
                "pass a shorter name",
                out.hint,
            )
    _probe(folder, label, out.hint)


def _input_files(inputs: Sequence[Input]) -> dict[tuple[int, int], tuple[Input, Path]]:
    """(device, inode) of every file the inputs name (folders: the files inside them)."""
    found: dict[tuple[int, int], tuple[Input, Path]] = {}
    for inp in inputs:
        for file in _files_of(Path(inp.path)):
            with contextlib.suppress(OSError):
                st = os.stat(file)
                if stat.S_ISREG(st.st_mode):
                    found.setdefault((st.st_dev, st.st_ino), (inp, file))
    return found


def _files_of(path: Path) -> Iterable[Path]:
    st = _stat(path)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        yield path
        return
    count = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            yield Path(root) / name
            count += 1
            if count >= MAX_INPUT_FILES:
                return


def _inside(child: Path, parent: Path) -> bool:
    try:
        return Path(child).resolve().is_relative_to(Path(parent).resolve())
    except (OSError, RuntimeError):
        return False


def check_outputs(outputs: Sequence[Output], inputs: Sequence[Input] = ()) -> None:
    """Check every output (`check_output`), that no two name the same file, and that none
    is one of the run's `inputs` (the same file by inode, or an input inside a folder
    replaced as a whole). Raises `OutputError` on the first problem.

    Example:
        check_outputs([Output(Path("out/readout.safetensors"), "--output")],
                      [Input(Path("data"), "the training data (--training-data-dir)")])
    """
    for out in outputs:
        check_output(out)
    seen: dict[Path, Output] = {}
    for out in outputs:
        key = Path(out.path).resolve()
        other = seen.get(key)
        if other is not None and "file" in (other.kind, out.kind):
            raise _fail(
                _label(out),
                f"{other.flag} writes the same path",
                "pass a different path to each",
            )
        seen.setdefault(key, out)
    trees = [out for out in outputs if out.kind == "tree"]
    files = _input_files(inputs)
    for out in outputs:
        label = _label(out)
        for tree in trees:
            if out.kind == "file" and _inside(out.path, tree.path):
                raise _fail(
                    label,
                    f"it is inside {tree.path} ({tree.flag}), which is replaced as a whole",
                    "pass a path outside it",
                )
        if out.kind == "tree":
            for inp in inputs:
                if _stat(Path(inp.path)) is not None and _inside(inp.path, out.path):
                    raise _fail(
                        label,
                        f"{inp.what} {inp.path} is inside it, and it is replaced as a whole",
                        "move the input elsewhere, or pass another path",
                    )
            continue
        st = _stat(Path(out.path))
        if out.kind == "file" and st is not None and (st.st_dev, st.st_ino) in files:
            inp, file = files[(st.st_dev, st.st_ino)]
            what = f"a file of {inp.what}" if file != Path(inp.path) else inp.what
            if Path(file).resolve() != Path(out.path).resolve():  # a link to it
                what = f"{what}, {file}"
            raise _fail(
                label,
                f"it is {what}, an input of this run, and would be overwritten",
                "pass another path",
            )


# --- the final writes ------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem allows opening a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _short(name: str, limit: int = 40) -> str:
    """`name` cut to at most `limit` UTF-8 bytes, for temporary names that must stay legal."""
    while len(os.fsencode(name)) > limit:
        name = name[:-1]
    return name


def ensure_dir(path: str | os.PathLike[str], hint: str = "") -> Path:
    """`mkdir -p path`, an `OSError` becoming one `OutputError` line naming `path`."""
    folder = Path(path)
    refuse_special(folder, "dir", hint=hint)
    with naming(folder, hint):
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def _stage(target: Path, data: bytes) -> Path:
    """Write `data` to a fsynced temporary sibling of `target`; returns its path."""
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{_short(target.name)}.", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def atomic_write_files(
    files: Sequence[tuple[str | os.PathLike[str], bytes]], *, hint: str = ""
) -> None:
    """Write several files all or nothing: stage each as a fsynced temporary sibling, then
    rename them into place in order. A failure while staging (full disk, read-only file
    system, a name too long …) leaves every path as it was and no temporary file behind.

    Raises `OutputError` naming the path and the cause (and `hint`, another way out).
    Only regular files are ever replaced.

    Example:
        atomic_write_files([("out/quality.json", b"{}"), ("out/report.html", page)])
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files:
            target = Path(path)
            refuse_special(target)
            with naming(target, hint):
                target.parent.mkdir(parents=True, exist_ok=True)
                staged.append((_stage(target, data), target))
        for tmp, target in staged:
            with naming(target, hint):
                os.replace(tmp, target)
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    for parent in dict.fromkeys(target.parent for _, target in staged):
        _fsync_dir(parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, hint: str = "") -> None:
    """Write `data` to `path` atomically (temp file in the same directory, then rename)."""
    atomic_write_files([(path, data)], hint=hint)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def json_bytes(obj: Any) -> bytes:
    """`obj` as indented JSON with a trailing newline, UTF-8."""
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented JSON (trailing newline) to `path` atomically."""
    atomic_write_bytes(path, json_bytes(obj))


def _under(filename: Any, folder: Path) -> bool:
    return filename is not None and Path(os.fsdecode(filename)).is_relative_to(folder)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory that becomes `path` only if the block succeeds.

    On success an existing `path` is replaced (when `overwrite`), so readers see the old
    directory or the new one. On any exception the temporary directory is removed and
    `path` is left exactly as it was. An `OSError` while writing into the temporary
    directory or swapping it in becomes an `OutputError` naming the final path.

    Example:
        with atomic_directory("out/data") as tmp:
            (tmp / "warmth.jsonl").write_text(...)
    """
    target = Path(os.path.abspath(path))
    refuse_special(target, "tree")
    ensure_dir(target.parent)
    if target.exists() and not overwrite:
        raise OutputError(f"cannot write {target}: it already exists")
    with naming(target):
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{_short(target.name)}.", dir=target.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; give the usual mode
        try:
            yield tmp
        except OSError as exc:
            if not _under(exc.filename, tmp):
                raise
            where = target / Path(os.fsdecode(exc.filename)).relative_to(tmp)
            raise os_error(where, OSError(exc.errno, exc.strerror)) from None
        with naming(target):
            for child in tmp.rglob("*"):
                if child.is_file():
                    with open(child, "rb") as fh:
                        os.fsync(fh.fileno())
            _swap_in(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename `tmp` to `target`, an existing `target` moved aside first and removed after."""
    if not target.exists():
        os.replace(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".old-{_short(target.name)}.", dir=target.parent))
    try:
        os.replace(target, old / "d")
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(old / "d", target)
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


# --- putting outputs back when a command fails half-way ---------------------------------


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


@dataclass
class _Saved:
    """What one path was before a command: a hard-linked copy (our writes only ever
    rename new files into place, so a link keeps the old bytes), or nothing."""

    path: Path
    backup: Path | None  # a private folder holding the copy as `d`
    created: list[Path]  # folders above `path` that did not exist yet (deepest last)

    @classmethod
    def take(cls, path: Path) -> _Saved:
        path = Path(os.path.abspath(path))
        folder, missing = _first_existing(path.parent)
        created = [folder.joinpath(*missing[: i + 1]) for i in range(len(missing))]
        if not os.path.lexists(path):
            return cls(path, None, created)
        with naming(path):
            backup = Path(tempfile.mkdtemp(prefix=f".old-{_short(path.name)}.", dir=path.parent))
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.copytree(path, backup / "d", symlinks=True, copy_function=_link_or_copy)
                else:
                    _link_or_copy(str(path), str(backup / "d"))
            except BaseException:
                shutil.rmtree(backup, ignore_errors=True)
                raise
        return cls(path, backup, created)

    def restore(self) -> None:
        if self.backup is None:
            if os.path.lexists(self.path):
                _remove(self.path)
        else:
            old = self.backup / "d"
            folders = [p for p in (old, self.path) if p.is_dir() and not p.is_symlink()]
            if folders and os.path.lexists(self.path):
                os.replace(self.path, self.backup / "new")  # removed with the backup
            os.replace(old, self.path)  # a file over a file: atomic, no moment without one
        for folder in reversed(self.created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty

    def discard(self) -> None:
        if self.backup is not None:
            shutil.rmtree(self.backup, ignore_errors=True)


@contextlib.contextmanager
def restore_on_failure(paths: Iterable[str | os.PathLike[str]], note: str = "") -> Iterator[None]:
    """Run the block; if it raises, put every path back exactly as it was (files and
    folders byte for byte, paths that did not exist removed, folders made for them
    removed when empty), then re-raise.

    For commands that write several outputs one after another (`amygdala run`: the
    training data, then the vectors, then the report): a failure anywhere leaves the
    output folder as it was. Copies are hard links, so this costs no disk space. `note`
    is logged (a warning, which the command line shows on stderr) once everything is
    back.

    Example:
        with restore_on_failure([out / "training-data", out / "readout.safetensors"]):
            extract(...)
            train(...)
    """
    saved: list[_Saved] = []
    try:
        for path in dict.fromkeys(Path(os.path.abspath(p)) for p in paths):
            saved.append(_Saved.take(path))
        yield
    except BaseException:
        for item in reversed(saved):
            try:
                item.restore()
            except OSError as exc:
                log.warning("warning: could not restore %s: %s", item.path, exc)
                note = ""
        if note:
            log.warning("%s", note)
        raise
    finally:
        for item in saved:
            item.discard()
