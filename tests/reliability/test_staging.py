"""`outputs.staging`: the scratch space of every writing command is gone on every exit.

The interrupt case is made deterministic: the signal is sent from inside the temp-folder call,
right after the folder appears, which is the moment an earlier version could leak it (CI saw an
empty `.ds.partial-*` left by a SIGINT that landed between `mkdtemp` and the `try:`).
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading

import pytest

from mclstexp_hub.outputs import publish_file, replace_folder, staging, write_text_atomic


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """Ctrl-C as in a foreground shell (a run started with `cmd &` inherits SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(autouse=True)
def other_thread():
    """A live second thread, as in a real command (readers, progress bars): the OS may hand a
    process-directed signal to it, so masking the main thread alone would not hold it."""
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, daemon=True)
    worker.start()
    yield
    stop.set()
    worker.join()


def _signal_on_create(monkeypatch, name: str, sig: int):
    real = getattr(tempfile, name)

    def creates_then_signals(*args, **kwargs):
        made = real(*args, **kwargs)
        os.kill(os.getpid(), sig)  # delivered at once unless the caller holds it
        return made

    monkeypatch.setattr(tempfile, name, creates_then_signals)


@pytest.mark.parametrize("file", [False, True], ids=["folder", "file"])
def test_interrupt_as_the_staging_appears_leaves_nothing(tmp_path, monkeypatch, file):
    _signal_on_create(monkeypatch, "mkstemp" if file else "mkdtemp", signal.SIGINT)
    entered = []
    with pytest.raises(KeyboardInterrupt), staging(tmp_path, ".out.partial-", file=file) as scratch:
        entered.append(scratch)
    assert list(tmp_path.iterdir()) == []
    assert entered == []  # the held signal lands before the body runs, inside the cleanup


def test_sigterm_handler_runs_and_cleans(tmp_path, monkeypatch):
    class Terminated(Exception):
        pass

    def raise_terminated(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        _signal_on_create(monkeypatch, "mkdtemp", signal.SIGTERM)
        with pytest.raises(Terminated), staging(tmp_path, ".out.partial-"):
            pass
        assert signal.getsignal(signal.SIGTERM) is raise_terminated  # the caller's, put back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert list(tmp_path.iterdir()) == []


def test_staging_is_removed_after_errors_and_success(tmp_path):
    with pytest.raises(RuntimeError), staging(tmp_path, ".a.partial-") as scratch:
        (scratch / "half").write_text("x")
        raise RuntimeError("boom")
    with staging(tmp_path, ".b.partial-") as scratch:
        (scratch / "left").write_text("x")
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back


def test_published_file_and_folder_survive_the_staging(tmp_path):
    target = tmp_path / "out.txt"
    with staging(tmp_path, ".out.txt.", file=True) as scratch:
        scratch.write_text("done")
        publish_file(scratch, target)
    assert target.read_text() == "done"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    (folder / "keep").mkdir()
    (folder / "keep" / "state.bin").write_text("resume")
    with staging(tmp_path, ".folder.partial-") as scratch:
        (scratch / "new.txt").write_text("new")
        replace_folder(scratch, folder, keep=["keep", "absent"])
    assert sorted(p.name for p in folder.iterdir()) == ["keep", "new.txt"]
    assert (folder / "keep" / "state.bin").read_text() == "resume"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "out.txt"]
    write_text_atomic("text", tmp_path / "card.md")
    assert (tmp_path / "card.md").read_text() == "text"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.md", "folder", "out.txt"]


def test_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    (folder / "keep").mkdir()
    real = os.replace
    with staging(tmp_path, ".folder.partial-") as scratch:
        (scratch / "new.txt").write_text("new")

        def fail_on_publish(src, dst):
            if os.fspath(src) == os.fspath(scratch):
                raise OSError("disk full")
            return real(src, dst)

        monkeypatch.setattr(os, "replace", fail_on_publish)
        with pytest.raises(OSError, match="disk full"):
            replace_folder(scratch, folder, keep=["keep"])
        monkeypatch.setattr(os, "replace", real)
    assert sorted(p.name for p in folder.iterdir()) == ["keep", "old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_an_ignored_interrupt_stays_ignored(tmp_path, monkeypatch):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # put back by the ctrl_c_raises fixture
    _signal_on_create(monkeypatch, "mkdtemp", signal.SIGINT)
    with staging(tmp_path, ".out.partial-") as scratch:
        (scratch / "written").write_text("x")  # the held SIGINT was ignored, as asked
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert list(tmp_path.iterdir()) == []
