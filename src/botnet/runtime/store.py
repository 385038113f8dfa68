"""The transactional file store: atomic writes, file sets, safe reading. It knows no model.

Every file the package writes for later reading goes through here:

* :func:`atomic_write`: ``path`` only ever holds a complete version;
* :func:`write_file_set`: several files of a directory replaced as one set
  (a training run's ``last.pt``, ``last.safetensors``, ``metrics.jsonl``
  ...): every file is first written in full under a temporary name, then
  ``manifest.json`` records the set (the commit point), then the files are
  renamed into place. A kill before the commit leaves the previous set
  untouched; a kill after it is finished by :func:`recover_file_set` (run
  when a run starts or resumes), and until then every reader here follows
  the manifest to the committed files (:func:`committed_path`). So a
  directory never mixes files of two sets.

Two kinds of files describe a model (the description, "meta", is a
JSON-able dict the caller defines; :mod:`botnet.checkpoint` for
classifiers, :mod:`botnet.detection.checkpoint` for detectors):

* ``*.safetensors``: the weights, with the description (JSON) in the
  safetensors metadata under ``"botnet"``;
* ``*.pt``: a training checkpoint, a dict of tensors and plain Python values
  with at least ``"model"`` (state dict) and ``"meta"``, read with
  ``torch.load(weights_only=True)``: nothing is ever unpickled.

**Failed writes** are one line: whichever library was writing (torch.save,
safetensors, json, PNG encoders, torch.jit), an OS failure (a full disk
``ENOSPC``, a quota ``EDQUOT``, a read-only file system ``EROFS``, ``EIO``)
becomes :class:`WriteError`, an OSError whose text is the final path and the
OS reason ("cannot write 'runs/x/last.pt': no space left on device"). The
reason is found even where a library hides it (:func:`_os_failure`):
torch.save is given a Python file object, through which the OSError itself
comes back (given a path, its C++ writer says only "unexpected pos");
safetensors' Rust error carries "(os error N)"; for any other library
exception the temporary file is extended with plain writes, and the OS
error that probe meets is the reason (an exception the probe does not
reproduce is a bug, and keeps its traceback). The temporary file is always
removed, and a file set that was not committed leaves the previous set in
force.

**Signals** (:mod:`botnet.runtime.interrupts`): a SIGINT / SIGTERM while a
file is being written cuts the write (its temporary file is removed); one
that arrives while a committed set is being renamed into place is held back
until the renames are done, so a stop never leaves a half-renamed set.

**Damaged files** are told apart from unsafe ones: a truncated, empty or
garbage file is "damaged or not a checkpoint"; only a file that really
carries pickled Python objects is refused as such, with the objects named
(``torch.serialization.get_unsafe_globals_in_checkpoint`` for torch's zip
format; a ``pickletools`` scan, which runs nothing, for legacy and plain
pickle files, which torch's function does not read).
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from . import interrupts

__all__ = [
    "MANIFEST",
    "CheckpointError",
    "PathLike",
    "WriteError",
    "atomic_write",
    "committed_path",
    "load_checkpoint",
    "read_manifest",
    "read_safetensors",
    "read_weights_and_meta",
    "recover_file_set",
    "resolve_checkpoint_path",
    "save_checkpoint",
    "torch_save",
    "write_file_set",
    "write_safetensors",
]

PathLike = str | os.PathLike[str]
MANIFEST = "manifest.json"
_TMP_SUFFIX = ".tmp"
# Globals a plain tensor checkpoint may name (what torch.save writes for tensors and containers); for
# legacy / plain pickle files only (torch's zip format is checked with torch's own list).
_SAFE_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset",
                         "_codecs.encode", "numpy.core.multiarray._reconstruct", "numpy.dtype", "numpy.ndarray")


class CheckpointError(ValueError):
    """A checkpoint file that is damaged, unsafe or not a botnet checkpoint (one line, names the file)."""


class WriteError(OSError):
    """A file could not be written: ``str()`` is one line with the final path and the OS reason."""

    def __init__(self, path: PathLike, error: int) -> None:
        reason = os.strerror(error)
        reason = reason[:1].lower() + reason[1:]
        super().__init__(error, reason, str(path))
        self.path = Path(path)
        self.reason = reason
        self.message = f"cannot write {str(path)!r}: {reason}"

    def __str__(self) -> str:
        return self.message


# --------------------------------------------------------------------------- writing


_OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")  # Rust's io::Error (safetensors)


def _os_failure(err: BaseException, tmp: Path) -> int | None:
    """The errno behind a writer's exception, or None if the OS did not cause it (see the module docstring)."""
    seen: BaseException | None = err
    while seen is not None:  # the OSError itself, or one a library chained
        if isinstance(seen, OSError) and seen.errno:
            return seen.errno
        seen = seen.__cause__ or seen.__context__
    match = _OS_ERROR_IN_TEXT.search(str(err))
    if match:
        return int(match.group(1))
    try:  # the library hid it: meet it again with plain writes where the library stopped
        with open(tmp, "ab") as handle:
            handle.write(bytes(1 << 20))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as probe:
        return probe.errno or None
    return None


@contextmanager
def _reporting(path: Path) -> Iterator[None]:
    """An OSError from the block becomes a :class:`WriteError` for ``path`` (the file the user knows)."""
    try:
        yield
    except WriteError:
        raise
    except OSError as err:
        if not err.errno:
            raise
        raise WriteError(path, err.errno) from err


def torch_save(state: Any, path: PathLike) -> None:
    """``torch.save`` through a Python file object, so that a failing write raises the OSError itself."""
    with open(path, "wb") as handle:
        torch.save(state, handle)


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_temp(path: Path, write: Callable[[Path], None], created: list[Path]) -> Path:
    """Fill a fresh temporary file beside ``path`` with ``write``; fsynced, with the umask's mode.

    The file is appended to ``created`` the moment it exists (signals held back until then), so the
    caller can remove it whatever stops it afterwards: a temporary file is never left behind.
    """
    tmp: Path | None = None
    try:
        with interrupts.deferred(), _reporting(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
            os.close(fd)
            tmp = Path(tmp_name)
            created.append(tmp)
        try:
            write(tmp)
        except Exception as err:
            error = _os_failure(err, tmp)
            if error is None:
                raise
            raise WriteError(path, error) from err
        with _reporting(path):
            # After writing: some writers (safetensors) replace the file and create it 0600.
            os.chmod(tmp, _file_mode())
            with open(tmp, "rb+") as handle:
                handle.flush()
                os.fsync(handle.fileno())
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> None:
    """Write a file so that ``path`` only ever holds a complete version.

    ``write`` fills a temporary file in the same directory, which gets the
    mode a plain ``open()`` would give (the umask's), is fsynced and renamed
    over ``path`` (atomic on POSIX). A failure or a signal at any moment
    leaves the previous file intact and no temporary file behind.
    """
    path = Path(path)
    created: list[Path] = []
    try:
        tmp = _write_temp(path, write, created)
        with _reporting(path):
            os.replace(tmp, path)
            _fsync_dir(path.parent)
    finally:
        for leftover in created:  # renamed already, unless something stopped the write
            leftover.unlink(missing_ok=True)


def save_checkpoint(path: PathLike, state: dict[str, Any]) -> None:
    """Atomically ``torch.save`` a checkpoint dict (tensors and plain values only)."""
    atomic_write(path, lambda tmp: torch_save(state, tmp))


def write_safetensors(path: PathLike, state: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Write ``state`` to ``path`` (not atomically: wrap in :func:`atomic_write`), ``meta`` as JSON under "botnet"."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(tensors, str(path), metadata={"botnet": json.dumps(meta)})


def read_manifest(directory: PathLike) -> dict[str, Any] | None:
    """The ``manifest.json`` of a directory written by :func:`write_file_set`, or None."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{str(path)!r} is damaged ({err}); delete it to use the files beside it") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files", {}), dict):
        raise CheckpointError(f"{str(path)!r} is not a botnet manifest")
    return manifest


def write_file_set(
    directory: PathLike, writers: Mapping[str, Callable[[Path], None]], record: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Replace several files of ``directory`` as one set (all or none after a kill).

    Args:
        writers: final file name -> function that writes the file's content
            to the path it is given.
        record: JSON-able facts about this set (e.g. ``{"epoch": 3}``), stored
            in the manifest with each file written now. Files of earlier sets
            that are not rewritten keep their entries (e.g. ``best.pt`` of an
            earlier epoch).

    Returns:
        the manifest now in force.
    """
    directory = Path(directory)
    with _reporting(directory):
        directory.mkdir(parents=True, exist_ok=True)
    previous = read_manifest(directory) or {}
    if previous.get("pending"):
        recover_file_set(directory)
        previous = read_manifest(directory) or {}
    record = dict(record or {})
    files = dict(previous.get("files", {}))
    files.update({name: record for name in writers})
    manifest = {"format": "botnet-files", "version": 1, **record, "files": files}
    staged: dict[str, str] = {}
    created: list[Path] = []
    try:
        for name, write in writers.items():  # long writes: a signal cuts them (the previous set stays)
            staged[name] = _write_temp(directory / name, write, created).name
        # The commit, then the renames: moments, held together against signals (interrupts.deferred).
        with interrupts.deferred():
            pending = json.dumps({**manifest, "pending": staged}, indent=1)
            atomic_write(directory / MANIFEST, lambda tmp: tmp.write_text(pending))
            # Committed: from here on the set is the new one, even if a kill stops the renames.
            with _reporting(directory / next(iter(staged), MANIFEST)):
                for name, tmp in staged.items():
                    os.replace(directory / tmp, directory / name)
                _fsync_dir(directory)
            atomic_write(directory / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))
    except BaseException:
        if not _committed(directory, staged):  # the previous set stays in force: drop this one's files
            for tmp in created:
                tmp.unlink(missing_ok=True)
        raise
    return manifest


def _committed(directory: Path, staged: dict[str, str]) -> bool:
    """Whether the manifest records ``staged`` as its pending set (the commit happened)."""
    try:
        manifest = read_manifest(directory) or {}
    except CheckpointError:
        return False
    return bool(staged) and manifest.get("pending") == staged


def recover_file_set(directory: PathLike) -> list[str]:
    """Finish a committed set whose renames a kill interrupted, and delete leftover temporary files.

    Returns:
        the names of the temporary files deleted (uncommitted work).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    manifest = read_manifest(directory)
    with interrupts.deferred(), _reporting(directory / MANIFEST):
        if manifest is not None and manifest.get("pending"):
            for name, tmp in manifest["pending"].items():
                if (directory / tmp).is_file():
                    os.replace(directory / tmp, directory / name)
            _fsync_dir(directory)
            manifest = {k: v for k, v in manifest.items() if k != "pending"}
            atomic_write(directory / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))
        removed = []
        for leftover in directory.glob(f".*{_TMP_SUFFIX}"):
            if leftover.is_file():
                leftover.unlink()
                removed.append(leftover.name)
    return sorted(removed)


def committed_path(path: PathLike) -> Path:
    """``path``, or the committed temporary file its directory's manifest says holds it (a kill
    stopped the renames of a committed set: until the next run recovers the directory, readers
    follow the manifest)."""
    path = Path(path)
    try:
        manifest = read_manifest(path.parent)
    except CheckpointError:
        return path
    pending = (manifest or {}).get("pending") or {}
    if path.name in pending and (path.parent / pending[path.name]).is_file():
        return path.parent / pending[path.name]
    return path


# --------------------------------------------------------------------------- reading


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    if "WeightsUnpickler error:" in text:  # torch's long preamble says nothing about this file
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


def _pickle_globals(data: bytes) -> list[str]:
    """Every global a pickle stream names (without running it); raises ValueError if it is not a pickle."""
    names, strings = [], []
    for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
        if opcode.name == "GLOBAL":
            names.append(str(arg).replace(" ", "."))
        elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
            names.append(f"{strings[-2]}.{strings[-1]}")
        elif isinstance(arg, str):
            strings.append(arg)
        if opcode.name == "STOP":
            break
    return names


def _diagnose(path: Path, err: BaseException) -> CheckpointError:
    """Why ``torch.load(weights_only=True)`` failed: unsafe content, or a damaged / foreign file."""
    message = str(err)
    if "Unsupported global" in message:
        detail = message[message.find("Unsupported global"):].splitlines()[0]
        name = detail.split("GLOBAL", 1)[-1].split(" was not", 1)[0].strip()
        return _unsafe(path, f"it names {name}")
    if path.stat().st_size == 0:
        return CheckpointError(f"{str(path)!r} is empty (0 bytes): a damaged checkpoint (was its writing interrupted?)")
    unsafe: list[str] = []
    try:
        if zipfile.is_zipfile(path):  # torch.save's format: torch lists what its weights-only loader refuses
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        else:  # a legacy torch.save or a plain pickle, which torch's function does not read
            unsafe = [name for name in _pickle_globals(path.read_bytes())
                      if not name.startswith(_SAFE_GLOBAL_PREFIXES)]
    except Exception:  # not a readable zip or pickle stream: damaged or another kind of file
        unsafe = []
    if unsafe:
        return _unsafe(path, f"it names {', '.join(sorted(set(unsafe))[:3])}")
    return CheckpointError(
        f"{str(path)!r} is damaged or not a checkpoint file (truncated, overwritten or another format): "
        f"{_first_line(err)[:160]}"
    )


def _unsafe(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(
        f"refusing to load {str(path)!r}: it is not a plain tensor checkpoint but carries pickled Python objects, "
        f"and loading it would unpickle arbitrary objects or code (weights_only=True refuses them; {detail})"
    )


def load_checkpoint(path: PathLike) -> dict[str, Any]:
    """Read a ``.pt`` checkpoint with ``weights_only=True``.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError (a ValueError): the file is damaged (truncated,
            empty, garbage), or carries pickled objects or code (refused,
            never executed), or holds no dict.
    """
    path = Path(path)
    source = committed_path(path)
    if not source.is_file():
        raise FileNotFoundError(f"no checkpoint file at {str(path)!r}")
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning would be a second line
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:
        raise _diagnose(source, err) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{str(path)!r} is not a botnet checkpoint (it holds a {type(checkpoint).__name__})")
    return checkpoint


def read_safetensors(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a ``.safetensors`` file; a damaged file is a one-line CheckpointError."""
    from safetensors import safe_open

    path = Path(path)
    source = committed_path(path)
    if not source.is_file():
        raise FileNotFoundError(f"no weights file at {str(path)!r}")
    if source.stat().st_size == 0:
        raise CheckpointError(f"{str(path)!r} is empty (0 bytes): a damaged weights file")
    try:
        with safe_open(str(source), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as err:
        raise CheckpointError(
            f"{str(path)!r} is damaged or not a safetensors file (truncated or overwritten?): {_first_line(err)[:160]}"
        ) from None
    return state, metadata


def resolve_checkpoint_path(path: PathLike) -> Path:
    """``path`` itself, or for a run directory its best/last .safetensors or .pt file."""
    path = Path(path)
    if not path.is_dir():
        return path
    for candidate in ("best.safetensors", "last.safetensors", "best.pt", "last.pt"):
        if committed_path(path / candidate).is_file():
            return path / candidate
    raise FileNotFoundError(f"no best/last .safetensors or .pt checkpoint in directory {str(path)!r}")


def read_weights_and_meta(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, description) from a ``.safetensors`` file or a ``.pt`` checkpoint, never unpickling."""
    path = Path(path)
    if path.suffix == ".safetensors":
        state, metadata = read_safetensors(path)
        if "botnet" not in metadata:
            raise CheckpointError(f"{str(path)!r} is not a botnet checkpoint: no botnet model description in its metadata")
        try:
            meta = json.loads(metadata["botnet"])
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{str(path)!r} has a damaged model description: {err}") from None
        return state, meta
    checkpoint = load_checkpoint(path)
    if "model" not in checkpoint or "meta" not in checkpoint:
        raise CheckpointError(f"{str(path)!r} is not a botnet checkpoint (needs 'model' and 'meta' entries)")
    return checkpoint["model"], checkpoint["meta"]


