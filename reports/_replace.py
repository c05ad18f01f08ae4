"""Replace a folder the tool writes so that a kill at ANY moment leaves the old folder or the new one.

How (`replace_folder`):

1. The folder at `out` is read: its marker lists every file the tool wrote there last time
   (`"files"`); everything else in it belongs to the user. A folder without a marker is the user's
   entirely: refused when not empty, unless `force`.
2. The new folder is built complete in a temp folder beside `out` (`.NAME.tmp-XXXX`, holding a
   `.mmoe-inspect-partial` file that says so). The user's files are added to it as hard links (no
   copy, same inodes); a user file at a path the new report writes is refused, never overwritten.
   The marker is written last, listing the new report's files.
3. A journal file beside `out` names the temp folder, then the two folders are exchanged in one
   atomic `renameat2(RENAME_EXCHANGE)` (Linux; elsewhere two renames, recorded in the journal), and
   the old folder is deleted.

Until the exchange `out` is untouched; after it `out` is the complete new folder. What a kill leaves
beside `out` (the temp folder, the journal) is removed by the next run for the same `out`.
A symlinked `out` is followed: the folder it points to is replaced and the link stays a link.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from mmoe_inspect.errors import MmoeInspectError

PARTIAL = ".mmoe-inspect-partial"
MAX_USER_ENTRIES = (
    20_000  # a folder holding more user files than this is refused (linking them takes too long)
)


class ReplaceError(MmoeInspectError, RuntimeError):
    """The folder cannot be replaced as asked (refused target, collision, failed build or swap)."""

    bad_input = False  # a failed folder swap is not a fault of the input


def _libc_renameat2() -> Callable[[bytes, bytes], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int

    def call(a: bytes, b: bytes) -> int:
        return fn(-100, a, -100, b, 2)  # AT_FDCWD, RENAME_EXCHANGE

    return call


_RENAMEAT2 = _libc_renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing folders; False when this system cannot (then nothing happened)."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(os.fsencode(a), os.fsencode(b)) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _short(name: str) -> str:
    """A prefix of `name` that leaves room for the temp suffix within NAME_MAX (255 bytes)."""
    raw = name.encode()
    return raw[:200].decode(errors="ignore") if len(raw) > 200 else name


def _aside(out: Path, tag: str) -> Path:
    return out.parent / f".{_short(out.name)}.{tag}-{uuid.uuid4().hex[:8]}"


def read_marker(folder: Path, marker: str) -> dict | None:
    """The marker's JSON, or None when there is no marker (or it is not ours / not JSON)."""
    path = folder / marker
    if not path.is_file() or path.is_symlink():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == "mmoe-inspect" else None


def _tree(folder: Path) -> tuple[list[str], list[str]]:
    """(files and symlinks, folders) under `folder`, as POSIX paths relative to it."""
    files: list[str] = []
    dirs: list[str] = []
    for root, dnames, fnames in os.walk(folder, followlinks=False):
        rel = Path(root).relative_to(folder)
        for d in list(dnames):
            p = Path(root) / d
            if p.is_symlink():
                files.append((rel / d).as_posix())
                dnames.remove(d)
            else:
                dirs.append((rel / d).as_posix())
        files.extend((rel / f).as_posix() for f in fnames)
    return files, dirs


def _previous_files(marker: dict, files: list[str], legacy_entries: tuple[str, ...], name: str) -> set[str]:
    listed = marker.get("files")
    if isinstance(listed, list) and all(isinstance(f, str) for f in listed):
        return set(listed) | {name}
    # A marker from before the file list: its own top-level entries, as that version wrote them.
    return {f for f in files if f.split("/", 1)[0] in legacy_entries}


def clean_leftovers(out: Path) -> None:
    """Remove what a killed run left beside `out`: journals first, then partial temp folders of ours."""
    parent = out.parent
    if not parent.is_dir():
        return
    prefix = f".{_short(out.name)}."
    for journal in parent.glob(f"{glob_escape(prefix)}swap-*.json"):
        try:
            data = json.loads(journal.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if data.get("out") != str(out):
            continue
        old = Path(data.get("old", "")) if data.get("old") else None
        if old is not None and old.is_dir() and not out.exists():
            os.replace(old, out)  # the two-rename fallback was cut between its renames: put the old back
        for key in ("tmp", "old"):
            p = Path(data[key]) if data.get(key) else None
            if p is not None and p.is_dir() and p.parent == parent:
                shutil.rmtree(p, ignore_errors=True)
        journal.unlink(missing_ok=True)
    for tmp in parent.glob(f"{glob_escape(prefix)}tmp-*"):
        if not tmp.is_dir() or tmp.is_symlink():
            continue
        partial = tmp / PARTIAL
        try:
            inside = os.listdir(tmp)
            lines = partial.read_text(encoding="utf-8").splitlines() if partial.is_file() else []
        except OSError:
            continue
        owner = lines[0].strip() if lines else None
        if len(lines) > 1 and _running(lines[1]):  # another run writing this report now: not a leftover
            continue
        # ours: killed right after mkdir (empty), while writing the partial file, or later (owner = out)
        if not inside or inside == [PARTIAL] or owner == str(out):
            shutil.rmtree(tmp, ignore_errors=True)


def _running(line: str) -> bool:
    """Whether the partial file's `pid N` line names a process that is alive on this machine (another
    run writing the same report at the same time, whose temporary folder must not be removed)."""
    word, _, pid = line.strip().partition(" ")
    if word != "pid" or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    except OSError:
        return True  # alive under another user (EPERM), or cannot tell: keep it
    return True


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)


def out_dir_problem(out_dir: str | Path) -> str | None:
    """Why a report cannot be written at `out_dir`, known before any work (None when nothing is known
    against it): a symbolic-link loop, a file, a mount point, or the current directory or one holding it
    (replacing it would pull the directory out from under the caller's shell)."""
    out = Path(out_dir).absolute()
    try:
        real = out.resolve(strict=False)
    except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
        return f"{out} cannot be resolved ({exc}); pass a plain folder"
    if real.exists() and not real.is_dir():
        return f"{out} exists and is not a folder; pass a folder"
    if real.is_dir() and os.path.ismount(real):
        return (
            f"{out} is a mount point, which a report cannot replace: write the report to a folder inside it "
            f"(e.g. --out {out / 'report'})"
        )
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        return None
    if real == cwd or real in cwd.parents:
        return (
            f"{out} is the current directory or holds it: a report replaces its whole folder, which would pull "
            f"this directory out from under your shell; write the report to a folder of its own (e.g. --out "
            f"{out / 'report'})"
        )
    return None


def replace_folder(
    out_dir: str | Path,
    build: Callable[[Path], object],
    *,
    force: bool,
    marker: str,
    legacy_entries: tuple[str, ...],
    error: type[Exception],
) -> Path:
    """Build a new folder with `build(tmp)` and swap it in at `out_dir` (see the module docstring).

    `build` must write the marker file (JSON with "tool": "mmoe-inspect"); the list of written files
    is added to it here. Every refusal and failure raises `error(message)`; an `error` raised by
    `build` passes through.
    Returns the folder written (the symlink's target when `out_dir` is a symlink).
    """
    problem = out_dir_problem(out_dir)
    if problem is not None:
        raise error(problem)
    out = Path(out_dir).absolute()
    if out.is_symlink():
        target = out.resolve()
        if not target.is_dir():
            raise error(f"{out} is a symbolic link to {target}, which is not a folder; pass a folder")
        out = target
    if out.exists() and not out.is_dir():
        raise error(f"{out} exists and is not a folder")
    clean_leftovers(out)
    user: list[str] = []
    user_dirs: list[str] = []
    seen: set[str] = set()  # what `out` held at the start (files, symlinks, folders)
    if out.is_dir():
        files, dirs = _tree(out)
        seen = set(files) | set(dirs)
        found = read_marker(out, marker)
        if found is None:
            if (files or dirs) and not force:
                raise error(
                    f"{out} is not empty and does not hold an mmoe-inspect report; choose another folder, "
                    "or pass --force to add the report's files beside yours (none of yours is changed)"
                )
            user, user_dirs = files, dirs
        else:
            ours = _previous_files(found, files, legacy_entries, marker)
            user = [f for f in files if f not in ours]
            our_dirs = {"/".join(f.split("/")[:i]) for f in ours for i in range(1, f.count("/") + 1)}
            user_dirs = [d for d in dirs if d not in our_dirs or any(u.startswith(d + "/") for u in user)]
        if len(user) > MAX_USER_ENTRIES:
            raise error(
                f"{out} holds {len(user):,} files that are not the report's; write the report to its own folder"
            )
    tmp = _aside(out, "tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # exclusive, and honors the umask (unlike mkdtemp's 0700); over an existing folder, owner-only while
        # it is written (a private folder's report is never readable by others; a read-only one's mode is
        # put on it before the swap)
        tmp.mkdir(mode=0o700 if out.is_dir() else 0o777)
        (tmp / PARTIAL).write_text(f"{out}\npid {os.getpid()}\n", encoding="utf-8")
    except OSError as exc:  # a read-only or missing parent, a full disk: the user's to fix, one line
        shutil.rmtree(tmp, ignore_errors=True)
        raise error(f"cannot create a folder next to {out}: {exc.strerror or exc}") from exc
    journal: Path | None = None
    swapped = False
    try:
        try:
            build(tmp)
        except error:
            raise
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise error(
                    f"writing the report failed: the disk holding {out.parent} is full ({exc.strerror}); free "
                    "space there or write the report elsewhere (--out)"
                ) from exc
            raise error(f"writing the report failed: {type(exc).__name__}: {exc}") from exc
        new_files, _ = _tree(tmp)
        new_files = [f for f in new_files if f != PARTIAL]
        clash = _clashes(user, user_dirs, new_files)
        if clash:
            raise error(
                f"{out} holds {', '.join(clash[:5])}{' ...' if len(clash) > 5 else ''}, which mmoe-inspect "
                "did not write and the report would replace; move it away or choose another folder "
                "(--force never overwrites your files)"
            )
        _add_files_to_marker(tmp / marker, new_files)
        try:
            _link_user_files(out, tmp, user, user_dirs)
        except OSError as exc:
            raise error(
                f"cannot keep your files in {out} while replacing the report ({exc.strerror or exc}); "
                "write the report to its own folder"
            ) from exc
        journal = out.parent / f".{_short(out.name)}.swap-{uuid.uuid4().hex[:8]}.json"
        old = _aside(out, "old")
        journal.write_text(json.dumps({"out": str(out), "tmp": str(tmp), "old": str(old)}), encoding="utf-8")
        (tmp / PARTIAL).unlink()
        if out.is_dir():  # the folder keeps its own permissions (a private 0700 folder stays private)
            shutil.copymode(out, tmp)
        try:
            _swap(tmp, out, old)
            swapped = True  # an exchange leaves the old folder at `tmp`, two renames at `old`
        except OSError as exc:
            hint = ""
            if exc.errno == errno.EBUSY or os.path.ismount(out):
                hint = (
                    f"; {out} is a mount point, which cannot be replaced: write the report to a folder inside it "
                    f"(e.g. --out {out / 'report'})"
                )
            raise error(
                f"moving the finished report into {out} failed ({exc.strerror or exc}); "
                f"what was there before is unchanged{hint}"
            ) from exc
    finally:
        if tmp.exists() and not (swapped and out.is_dir() and not _rescue_late_files(tmp, out, seen)):
            shutil.rmtree(tmp, ignore_errors=True)
        if journal is not None:
            old_path = (
                json.loads(journal.read_text(encoding="utf-8")).get("old") if journal.exists() else None
            )
            old_dir = Path(old_path) if old_path else None
            if (
                old_dir is not None
                and old_dir.is_dir()
                and out.is_dir()
                and _rescue_late_files(old_dir, out, seen)
            ):
                shutil.rmtree(old_dir, ignore_errors=True)
            journal.unlink(missing_ok=True)
    return out


def _rescue_late_files(old: Path, out: Path, seen: set[str]) -> bool:
    """Move into the new `out` what appeared in the old folder while the report was written (not in `seen`, its
    start): the user's, and it must not go with the old folder. A name the new report took gets `.kept`.
    False when something could not be moved (the old folder is then not removed)."""
    moved = True
    files, _ = _tree(old)
    for f in files:
        if f in seen or any(f.startswith(d + "/") for d in seen if (old / d).is_symlink()):
            continue
        target = out / f
        if target.exists() or target.is_symlink():
            target = target.with_name(target.name + ".kept")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(old / f, target)
        except OSError:
            moved = False  # left in the old folder, which is then kept
    return moved


def _clashes(user: list[str], user_dirs: list[str], new_files: list[str]) -> list[str]:
    """User paths the new folder would replace: the same path, or a file where the report needs a folder."""
    new = set(new_files)
    new_dirs = {"/".join(f.split("/")[:i]) for f in new_files for i in range(1, f.count("/") + 1)}
    clash = [u for u in user if u in new or u in new_dirs]
    clash += [d for d in user_dirs if d in new]
    clash += [f for f in new_files if any(f.startswith(u + "/") for u in user)]
    return sorted(set(clash))


def _add_files_to_marker(path: Path, files: list[str]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data["files"] = sorted(files)
    path.write_text(json.dumps(data) + "\n", encoding="utf-8")


def _link_user_files(out: Path, tmp: Path, user: list[str], user_dirs: list[str]) -> None:
    """The user's files and folders, recreated in `tmp` as hard links (symlinks as symlinks)."""
    for d in sorted(user_dirs):
        (tmp / d).mkdir(parents=True, exist_ok=True)
        shutil.copystat(out / d, tmp / d, follow_symlinks=False)
    for f in user:
        src, dst = out / f, tmp / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        elif src.is_file():
            os.link(src, dst)
        else:
            raise OSError(errno.EPERM, "not a regular file, folder or link", str(src))


def _swap(tmp: Path, out: Path, old: Path) -> None:
    """Put `tmp` at `out` atomically (exchange), or with two renames where exchange is not available."""
    if not out.exists():
        os.replace(tmp, out)
        return
    if exchange(tmp, out):
        return  # `tmp` now holds the old folder; the caller deletes it
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
