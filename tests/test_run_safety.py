"""Nothing lost, nothing cryptic (issue 26, items 1-4): one run per directory, what --resume does,
failed writes, SIGINT / SIGTERM.

Every case checks what the user sees (exit status, one stderr line, no traceback) and what is left
on disk (one run, no temporary file, no stale lock, the last committed set loadable, exact resume).
The full-disk cases use a real tmpfs where this process may mount one (root); where it may not,
they skip, and the simulated cases (the OS errors a library raises or hides) still run.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from conftest import committed_epoch, run_metrics
from conftest import subprocess_env as _env

import botnet
from botnet.cli import main
from botnet.runtime import interrupts
from botnet.runtime.lock import LOCK_NAME, DirectoryLock
from botnet.runtime.store import (
    MANIFEST,
    WriteError,
    atomic_write,
    load_checkpoint,
    read_manifest,
    read_safetensors,
    save_checkpoint,
    write_file_set,
    write_safetensors,
)

# The fastest real run: digits at 8x8, botnet_mini, ~1-2 s per epoch on one thread.
RECIPE = ["--img-size", "8", "--batch-size", "128", "--no-progress"]
KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr")


pytestmark = pytest.mark.usefixtures("one_thread")


def _botnet(*argv: str) -> list[str]:
    return [sys.executable, "-m", "botnet", *argv]


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code)


def _one_line(err: str) -> str:
    """The single stderr line (asserts there is exactly one and no traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


def _temporaries(directory: Path) -> list[str]:
    return [p.name for p in directory.rglob("*") if p.name.endswith(".tmp")]


def _consistent(run: Path) -> int | None:
    """No temporary file and no lock left, and one committed epoch (returned; None if none was committed)."""
    assert not _temporaries(run), _temporaries(run)
    assert not (run / LOCK_NAME).exists()
    return committed_epoch(run)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run (a subprocess, one thread: what killed and resumed runs must equal)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    subprocess.run(_botnet("train", *RECIPE, "--epochs", "3", "--out", str(run)), check=True, capture_output=True,
                   env=_env())
    return run


# --------------------------------------------------------------------------- 1. one run per directory


class _Holder:
    """Another process holding a directory's lock the way a run does (flock + its record), without torch."""

    SCRIPT = (
        "import fcntl, json, os, socket, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname(), "
        "'command': 'botnet train --out elsewhere'}).encode())\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n"
    )

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([sys.executable, "-c", self.SCRIPT, str(directory / LOCK_NAME)],
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "locked"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


LOCK_CASES = {
    # case: (the directory holds a committed run, argv from the directory, the line after "botnet train: error: ")
    "a new run into a busy --out": (True, lambda run: ["train", *RECIPE, "--epochs", "1", "--out", str(run)],
                                    "{run!r} is in use by another run: pid {pid} on host "),
    "a resume of a busy run": (True, lambda run: ["train", "--resume", str(run)],
                               "{run!r} is in use by another run: pid {pid} on host "),
    "a resume of a busy run's last.pt": (True, lambda run: ["train", "--resume", str(run / "last.pt")],
                                         "{run!r} is in use by another run: pid {pid} on host "),
    "a resume of a run still in its first epoch": (False, lambda run: ["train", "--resume", str(run)],
                                                   "--resume {run!r}: its run is still going (pid {pid} on host "),
}


@pytest.mark.parametrize("case", list(LOCK_CASES))
def test_a_busy_run_directory_is_refused_naming_its_holder(case, reference, tmp_path, capsys):
    committed, make_argv, expected = LOCK_CASES[case]
    run = tmp_path / "run"
    if committed:
        shutil.copytree(reference, run)
    holder = _Holder(run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    try:
        code = _run(make_argv(run))
        line = _one_line(capsys.readouterr().err)
        assert code == 2, line
        assert line.startswith("botnet train: error: " + expected.format(run=str(run), pid=holder.process.pid)), line
        assert "(botnet train --out elsewhere)" in line
        # Nothing in the directory changed: the holder's lock file still names the holder.
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    finally:
        holder.stop()
    (run / LOCK_NAME).unlink()  # the killed holder's (a real run removes its own)
    assert _consistent(run) == (3 if committed else None)


def test_under_torchrun_rank_0_locks_and_the_job_says_it_once(tmp_path):
    run = tmp_path / "run"
    holder = _Holder(run)
    try:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "-m", "botnet", "train", *RECIPE, "--batch-size", "64", "--epochs", "1", "--out", str(run)]
        result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=240, check=False)
    finally:
        holder.stop()
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("botnet train")]
    expected = (f"botnet train: error: {str(run)!r} is in use by another run: pid {holder.process.pid} on host "
                f"{os.uname().nodename} (botnet train --out elsewhere); wait for it to end or choose another directory")
    assert ours == [expected], result.stderr[-2000:]
    assert "exitcode  : 2" in result.stderr  # both ranks: rank 1 quietly, on rank 0's word
    assert result.stderr.count("Traceback") <= 1  # torchrun's own ChildFailedError report, none from a rank
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # the holder's, untouched


def test_a_stale_lock_is_taken_over_and_reported(tmp_path, capsys):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": gone.pid, "host": os.uname().nodename}))
    assert _run(["train", *RECIPE, "--epochs", "1", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"took over the lock of {str(run)!r} left by pid {gone.pid}" in out and "that process is gone" in out
    assert _consistent(run) == 1


def test_the_lock_is_one_writer_at_a_time_and_leaves_no_file(tmp_path):
    first, second = DirectoryLock(tmp_path), DirectoryLock(tmp_path)
    first.acquire()
    with pytest.raises(ValueError, match=f"pid {os.getpid()}"):
        second.acquire()  # a second open file description: flock refuses it even in one process
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    second.acquire()
    assert second.notice is None  # released properly: nothing stale to report
    second.release()


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    """A DataLoader worker may outlive a SIGKILLed run by seconds; the resume that follows must not wait."""
    from botnet.runtime import lock as lock_module

    lock = DirectoryLock(tmp_path)
    lock.acquire()
    ready, started = os.pipe()
    child = os.fork()
    if child == 0:  # the worker (os.fork has returned here: the at-fork hooks have run)
        os.write(started, b"x")
        time.sleep(1)
        os._exit(0)
    os.read(ready, 1)
    try:
        lock_module._HELD.discard(lock.fd)  # the parent "dies": its descriptor closes, nothing else happens
        os.close(lock.fd)
        again = DirectoryLock(tmp_path)
        again.acquire()  # while the child still runs
        assert "took over the lock" in again.notice
        again.release()
    finally:
        os.waitpid(child, 0)


def test_a_file_system_without_flock_runs_unlocked_and_says_so(tmp_path, monkeypatch):
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    lock = DirectoryLock(tmp_path)
    lock.acquire()
    assert "cannot be locked on its file system (no locks available)" in lock.notice
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


# --------------------------------------------------------------------------- 2. what --resume does


def _photos(root: Path) -> Path:
    from PIL import Image

    folder = root / "photos"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), (i * 90, 30, 30)).save(folder / f"img{i}.png")
    return folder


RESUME_REFUSALS = {
    # case: (argv from (run, root), exit status, expected line start / piece)
    "--out elsewhere": (lambda run, root: ["train", "--resume", str(run), "--out", str(root / "other")], 2,
                        "a resumed run continues in its own directory"),
    "an empty folder": (lambda run, root: ["train", "--resume", str(root / "empty")], 2,
                        "is not a run directory: it is empty"),
    "a folder of photos": (lambda run, root: ["train", "--resume", str(_photos(root))], 2,
                           "is not a run directory (no config.json, manifest.json or last.pt in it)"),
    "runs/ itself": (lambda run, root: ["train", "--resume", str(run.parent)], 2,
                     "is not a run directory but a folder of runs"),
    "a run that never finished an epoch": (lambda run, root: ["train", "--resume", str(root / "started")], 2,
                                           "the run stopped before its first epoch ended"),
    "detect train --resume of an empty folder": (lambda run, root: ["detect", "train", "--resume",
                                                                    str(root / "empty")], 2,
                                                 "is not a run directory: it is empty"),
}


@pytest.mark.parametrize("case", list(RESUME_REFUSALS))
def test_resume_refuses_in_one_line(case, reference, tmp_path, capsys):
    root = tmp_path / "place"
    runs = root / "runs"
    runs.mkdir(parents=True)
    run = runs / "run"
    shutil.copytree(reference, run)
    (root / "empty").mkdir()
    (root / "started").mkdir()
    (root / "started" / "config.json").write_text("{}")
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    make_argv, status, expected = RESUME_REFUSALS[case]
    argv = make_argv(run, root)
    code = _run(argv)
    line = _one_line(capsys.readouterr().err)
    assert code == status and expected in line, line
    assert line.startswith(f"botnet {argv[0]}: error: "), line
    if "photos" not in case:
        assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before  # nothing created or written
    assert _consistent(run) == 3


def test_resuming_a_finished_run_says_so_and_writes_nothing(reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    final = run_metrics(run)[-1]["val_acc"]
    # The same directory spelled another way is not "elsewhere".
    assert _run(["train", "--resume", str(run), "--out", str(tmp_path / "." / "run") + "/", "--json"]) == 0
    captured = capsys.readouterr()
    assert not captured.err
    line, summary = captured.out.splitlines()[0], json.loads(captured.out.splitlines()[-1])
    assert line.startswith("already complete: best val top-1 ") and f"final {final:.4f}" in line, line
    assert "nothing to train (--epochs 3, 3 done: give --epochs more than 3 to train on)" in line
    assert summary["complete"] is True and summary["final_val_acc"] == final and summary["epochs"] == 3
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before
    # More --epochs extend it.
    assert _run(["train", "--resume", str(run), "--epochs", "4"]) == 0
    assert "resuming after epoch 3" in capsys.readouterr().out
    assert _consistent(run) == 4


# --------------------------------------------------------------------------- 3. failed writes


def _mount_tmpfs(mount: Path, size: int) -> Path:
    """A tmpfs of ``size`` bytes at ``mount``, or the test skipped where this process may not mount one."""
    mount.mkdir()
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                                capture_output=True, text=True, check=False)
    except OSError as err:  # no mount program
        pytest.skip(f"cannot mount a tmpfs here ({err}); the simulated cases run")
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()[:80]}); the simulated cases run")
    return mount


@pytest.fixture
def disk(tmp_path):
    """A 2 MiB tmpfs (root only; skipped where this process may not mount), unmounted afterwards."""
    mount = _mount_tmpfs(tmp_path / "disk", 2 << 20)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> None:
    """Use up every free byte of ``directory``'s file system."""
    with open(directory / "filler", "wb", buffering=0) as handle:
        for chunk in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    handle.write(bytes(chunk))
            except OSError as err:
                assert err.errno == errno.ENOSPC


def _figure_writer(tmp: Path) -> None:
    import matplotlib

    from botnet.visualize.style import save_figure

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    save_figure(fig, tmp)


def _torchscript_writer(path: Path) -> None:
    from botnet.export import export_torchscript

    export_torchscript(botnet.create_model("botnet_tiny", num_classes=2), path, img_size=(32, 32))


STATE = {"w": torch.arange(200_000, dtype=torch.float32)}
FULL_DISK_WRITES = {
    # case: (file name, write it) -- each library a run or a command writes with
    "json (config.json)": ("config.json", lambda p: atomic_write(p, lambda tmp: tmp.write_text("{}" * 50_000))),
    "torch.save (last.pt)": ("last.pt", lambda p: save_checkpoint(p, {"model": STATE})),
    "safetensors (last.safetensors)": ("last.safetensors",
                                       lambda p: atomic_write(p, lambda tmp: write_safetensors(tmp, STATE, {}))),
    "PNG plot (curves.png)": ("curves.png", _figure_writer),
    "torch.save to a path, whose error hides the OS's (best.pt)": (
        "best.pt", lambda p: atomic_write(p, lambda tmp: torch.save({"model": STATE}, tmp))),
    "torch.jit.save (botnet export --format torchscript)": ("model.torchscript.pt", _torchscript_writer),
}


@pytest.mark.parametrize("case", list(FULL_DISK_WRITES))
def test_a_full_disk_is_one_line_with_the_path_and_the_reason(case, disk):
    name, write = FULL_DISK_WRITES[case]
    (disk / name).write_text("the previous version")
    _fill(disk)
    with pytest.raises(WriteError) as failure:
        write(disk / name)
    assert str(failure.value) == f"cannot write {str(disk / name)!r}: no space left on device"
    assert failure.value.errno == errno.ENOSPC
    assert (disk / name).read_text() == "the previous version" and not _temporaries(disk)


def test_a_full_disk_keeps_the_previous_file_set(disk):
    write_file_set(disk, {"last.pt": lambda tmp: torch.save({"epoch": 1}, tmp)}, {"epoch": 1})
    _fill(disk)
    with pytest.raises(WriteError, match="no space left on device"):
        write_file_set(disk, {"last.pt": lambda tmp: torch.save({"epoch": 2, **STATE}, tmp),
                              "metrics.jsonl": lambda tmp: tmp.write_text("{}\n")}, {"epoch": 2})
    assert read_manifest(disk)["epoch"] == 1 and load_checkpoint(disk / "last.pt")["epoch"] == 1
    assert not _temporaries(disk)


def test_a_read_only_file_system(disk):
    (disk / "config.json").write_text("{}")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    with pytest.raises(WriteError) as failure:
        atomic_write(disk / "config.json", lambda tmp: tmp.write_text("{}"))
    assert str(failure.value) == f"cannot write {str(disk / 'config.json')!r}: read-only file system"


class SafetensorError(Exception):
    """The shape of safetensors' Rust error (its class lives in a compiled module)."""


def _library_failure(number: int):
    def write(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        try:
            raise OSError(number, os.strerror(number))
        except OSError as err:  # a library wrapping the OSError (torch's file-object writer does this)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534") from err
    return write


def _rust_failure(number: int):
    def write(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise SafetensorError(f"Error while serializing: I/O error: {os.strerror(number)} (os error {number})")
    return write


def _plain_failure(number: int):
    def write(tmp: Path) -> None:
        raise OSError(number, os.strerror(number))
    return write


SIMULATED = {
    # case: (writer, expected reason) -- OS errors no tmpfs here can produce on demand
    "EDQUOT from a library that chains it": (_library_failure(errno.EDQUOT), "disk quota exceeded"),
    "EIO from safetensors' Rust writer": (_rust_failure(errno.EIO), "input/output error"),
    "ENOSPC raised plainly": (_plain_failure(errno.ENOSPC), "no space left on device"),
}


@pytest.mark.parametrize("case", list(SIMULATED))
def test_simulated_os_failures_are_one_line(case, tmp_path):
    write, reason = SIMULATED[case]
    target = tmp_path / "last.safetensors"
    target.write_text("previous")
    with pytest.raises(WriteError) as failure:
        atomic_write(target, write)
    assert str(failure.value) == f"cannot write {str(target)!r}: {reason}"
    assert target.read_text() == "previous" and not _temporaries(tmp_path)


def test_a_bug_in_a_writer_keeps_its_traceback(tmp_path):
    def buggy(tmp: Path) -> None:
        raise RuntimeError("not an OS failure")

    with pytest.raises(RuntimeError, match="not an OS failure"):  # the probe write succeeds: not the disk
        atomic_write(tmp_path / "x", buggy)
    assert not _temporaries(tmp_path)


def test_a_run_that_fills_its_disk_stops_in_one_line_and_resumes(reference, tmp_path, capsys):
    # A tmpfs with room for the first epoch's files and not the second's (which are written beside them).
    epoch_files = sum((reference / name).stat().st_size for name in
                      ("best.pt", "best.safetensors", "last.pt", "last.safetensors"))
    mount = _mount_tmpfs(tmp_path / "disk", epoch_files + (256 << 10))
    try:
        run = mount / "run"
        code = _run(["train", *RECIPE, "--epochs", "3", "--out", str(run)])
        line = _one_line(capsys.readouterr().err)
        assert code == 2, line
        assert line.startswith(f"botnet train: error: cannot write '{run}/"), line
        assert (f": no space left on device; epoch 1 of 3 is saved in {run}; free space or fix the disk, then "
                f"resume with: botnet train --resume {run}") in line
        assert _consistent(run) == 1
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
        assert _run(["train", "--resume", str(run)]) == 0
        assert _consistent(run) == 3
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# --------------------------------------------------------------------------- 4. signals


def _catches_sigterm(pid: int) -> bool:
    """Whether ``pid`` has installed a SIGTERM handler (/proc's SigCgt mask): botnet's guard is in place."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(mask & (1 << (signal.SIGTERM - 1)))


def _wait(process: subprocess.Popen, ready, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _image_folder(root: Path) -> list[str]:
    """A tiny two-class image folder, read by DataLoader worker processes: the options that train on it."""
    from PIL import Image

    for index, name in enumerate(("dark", "light")):
        (root / name).mkdir(parents=True)
        for i in range(16):
            Image.new("RGB", (16, 16), (40 + 160 * index, 10 * i, 30)).save(root / name / f"{i}.png")
    return ["--dataset", "folder", "--data-dir", str(root), "--model", "resnet_mini", "--img-size", "16",
            "--batch-size", "8", "--workers", "2", "--no-progress"]


SIGNAL_CASES = {
    # case: (signal, the moment it is sent, to the whole process group (a terminal's Ctrl-C, a scheduler))
    "SIGINT while importing": (signal.SIGINT, "import", False),
    "SIGTERM while importing": (signal.SIGTERM, "import", False),
    "SIGTERM before the first epoch is saved": (signal.SIGTERM, "locked", False),
    "SIGTERM after an epoch is saved": (signal.SIGTERM, "committed", False),
    "Ctrl-C (the group, DataLoader workers too) after an epoch": (signal.SIGINT, "committed", True),
}


@pytest.mark.parametrize("case", list(SIGNAL_CASES))
def test_a_signal_at_any_moment_is_one_line_and_resumes_exactly(case, reference, tmp_path):
    signum, moment, group = SIGNAL_CASES[case]
    run = tmp_path / "run"
    options = _image_folder(tmp_path / "images") if group else RECIPE
    process = subprocess.Popen(_botnet("train", *options, "--epochs", "3", "--out", str(run)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(),
                               start_new_session=group)
    if moment == "import":
        _wait(process, lambda: _catches_sigterm(process.pid), "the signal guard")
    elif moment == "locked":
        _wait(process, lambda: (run / LOCK_NAME).exists(), "the run directory's lock")
    else:
        _wait(process, lambda: (run / MANIFEST).exists(), "the first commit")
    if group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    line = _one_line(err)
    assert process.returncode == 128 + signum, (process.returncode, line)
    name = signal.Signals(signum).name
    if moment == "import":
        assert line == f"botnet: interrupted by {name} while starting; nothing was written"
        assert not run.exists()
        return
    saved = _consistent(run) if run.exists() else None
    if saved is None:
        assert line == (f"botnet train: interrupted by {name}; no epoch was saved; run the same command again to "
                        "start over"), line
        return
    assert line == (f"botnet train: interrupted by {name}; epoch {saved} of 3 is saved in {run}; resume with: "
                    f"botnet train --resume {run}"), line
    if not group:  # resume exactly to the uninterrupted run's metrics and weights
        subprocess.run(_botnet("train", "--resume", str(run)), check=True, capture_output=True, env=_env())
        assert _consistent(run) == 3
        deterministic = [[{k: r[k] for k in KEYS} for r in run_metrics(path)] for path in (run, reference)]
        assert deterministic[0] == deterministic[1]
        a, _ = read_safetensors(run / "last.safetensors")
        b, _ = read_safetensors(reference / "last.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.fixture
def handlers():
    with interrupts.installed():
        yield
    assert interrupts.received() is None  # nothing of a stop outlives the command (later library calls)


def _signal_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def _signal_then(function):
    def wrapper(*args, **kwargs):
        _signal_self()
        return function(*args, **kwargs)
    return wrapper


def _signalled_after(function):
    def wrapper(*args, **kwargs):
        result = function(*args, **kwargs)
        _signal_self()
        return result
    return wrapper


def _writer_that_is_signalled(tmp: Path) -> None:
    tmp.write_text("half")
    _signal_self()
    time.sleep(1)  # the handler raises here, long before


STOPS = {
    # case: (what is written, where the signal arrives: a patch (module, name, wrapper) or the writer itself)
    "a file, as its temporary file is created": ("file", (tempfile, "mkstemp", _signalled_after)),
    "a file, while it is written": ("file", None),
    "a file, between its write and its rename": ("file", (os, "replace", _signal_then)),
    "a file set, as a temporary file is created": ("set", (tempfile, "mkstemp", _signalled_after)),
    "a file set, while a file is written": ("set", None),
}


@pytest.mark.parametrize("case", list(STOPS))
def test_a_signal_while_writing_leaves_the_previous_version_and_no_temporary_file(case, handlers, tmp_path,
                                                                                  monkeypatch):
    what, patch = STOPS[case]
    write_file_set(tmp_path, {"last.pt": lambda tmp: tmp.write_text("1")}, {"epoch": 1})
    writer = _writer_that_is_signalled if patch is None else (lambda tmp: tmp.write_text("2"))
    if patch is not None:
        module, name, wrap = patch
        monkeypatch.setattr(module, name, wrap(getattr(module, name)))
    with pytest.raises(interrupts.Interrupted):
        if what == "file":
            atomic_write(tmp_path / "last.pt", writer)
        else:
            write_file_set(tmp_path, {"last.pt": writer, "metrics.jsonl": writer}, {"epoch": 2})
    monkeypatch.undo()
    assert (tmp_path / "last.pt").read_text() == "1" and read_manifest(tmp_path)["epoch"] == 1
    assert not _temporaries(tmp_path)


class _SignalledWhileCollected:
    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # the handler runs in __del__, whose exceptions Python swallows


_SIGNAL_AFTER_FORK: list[bool] = []


def _signal_after_fork() -> None:
    if _SIGNAL_AFTER_FORK:
        os.kill(os.getpid(), signal.SIGINT)


os.register_at_fork(after_in_parent=_signal_after_fork)  # as logging's lock release, a DataLoader worker's fork


def _collected() -> None:
    _SignalledWhileCollected()


def _forked() -> None:
    _SIGNAL_AFTER_FORK.append(True)
    try:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
    finally:
        _SIGNAL_AFTER_FORK.clear()
    os.waitpid(pid, 0)


@pytest.mark.parametrize("where", [_collected, _forked], ids=["in a __del__", "in an at-fork callback"])
def test_a_stop_that_python_swallows_is_delivered_again(where, handlers):
    """The stop raised where Python cannot propagate it (reported to sys.unraisablehook) still stops: the CI
    once saw a Ctrl-C arrive as a DataLoader worker was forked, and the run trained on to the end."""
    with pytest.raises(interrupts.Interrupted) as stop:
        where()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the redelivered signal is raised in this loop
            time.sleep(0.01)
    assert stop.value.signum == signal.SIGINT and stop.value.message is None


def test_a_signal_while_the_lock_is_taken_leaves_it_releasable(handlers, tmp_path, monkeypatch):
    import fcntl

    monkeypatch.setattr(fcntl, "flock", _signal_then(fcntl.flock))
    lock = DirectoryLock(tmp_path)
    with pytest.raises(interrupts.Interrupted):
        lock.acquire()  # taken in full first: the run's clean-up releases what it holds
    monkeypatch.undo()
    assert lock.held
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_signal_during_the_commit_waits_for_the_renames(handlers, tmp_path, monkeypatch):
    write_file_set(tmp_path, {"a": lambda tmp: tmp.write_text("1"), "b": lambda tmp: tmp.write_text("1")},
                   {"epoch": 1})
    real_replace = os.replace

    def signalled_replace(src, dst):
        if Path(dst).name == "a":
            os.kill(os.getpid(), signal.SIGTERM)  # arrives between the commit and the renames
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", signalled_replace)
    with pytest.raises(interrupts.Interrupted):
        write_file_set(tmp_path, {"a": lambda tmp: tmp.write_text("2"), "b": lambda tmp: tmp.write_text("2")},
                       {"epoch": 2})
    monkeypatch.setattr(os, "replace", real_replace)
    manifest = read_manifest(tmp_path)
    assert manifest["epoch"] == 2 and "pending" not in manifest  # the set was finished, then the stop
    assert [(tmp_path / n).read_text() for n in "ab"] == ["2", "2"] and not _temporaries(tmp_path)
