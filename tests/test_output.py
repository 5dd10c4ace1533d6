"""Outputs appear complete or not at all, with the user's umask, and leave no debris when the
writing fails or the process is stopped by SIGTERM or SIGINT."""

import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from popkin._output import staged_file, staged_folder, write_file


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_failed_file_write_leaves_neither_target_nor_temporary(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_file(tmp_path / "table.csv") as tmp:
            tmp.write_text("half of a ta")
            raise RuntimeError("disk full")
    assert names(tmp_path) == []


def test_file_replaces_an_older_version_only_when_complete(tmp_path):
    target = write_file(tmp_path / "a.csv", "old")
    with pytest.raises(RuntimeError):
        with staged_file(target) as tmp:
            tmp.write_text("new but broken")
            raise RuntimeError
    assert target.read_text() == "old"
    write_file(target, b"new")
    assert target.read_text() == "new" and names(tmp_path) == ["a.csv"]


def test_temporary_keeps_the_suffix_that_chooses_a_format(tmp_path):
    with staged_file(tmp_path / "vpc.png") as tmp:
        assert tmp.name.startswith(".vpc.") and tmp.suffix == ".png"
        tmp.write_bytes(b"png")


def test_new_folder_appears_whole_or_not_at_all(tmp_path):
    with pytest.raises(KeyError):
        with staged_folder(tmp_path / "fit") as staging:
            (staging / "summary.csv").write_text("x")
            raise KeyError("report failed")
    assert names(tmp_path) == []
    with staged_folder(tmp_path / "fit") as staging:
        (staging / "summary.csv").write_text("x")
        (staging / "ID_1").mkdir()
        (staging / "ID_1" / "report.html").write_text("y")
    assert names(tmp_path) == ["fit"] and names(tmp_path / "fit") == ["ID_1", "summary.csv"]


def test_existing_folder_keeps_other_files_and_replaces_same_names(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "ID_1").mkdir()
    (out / "ID_1" / "stale.html").write_text("old")
    with staged_folder(out) as staging:
        (staging / "ID_1").mkdir()
        (staging / "ID_1" / "report.html").write_text("new")
    assert names(out) == ["ID_1", "notes.txt"]
    assert names(out / "ID_1") == ["report.html"]
    assert names(tmp_path) == ["out"]


def test_a_file_where_a_folder_goes_and_back_is_refused_before_writing(tmp_path):
    (tmp_path / "plain").write_text("x")
    with pytest.raises(NotADirectoryError, match="plain exists and is not a folder"):
        with staged_folder(tmp_path / "plain"):
            pass
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError, match="dir is a folder"):
        with staged_file(tmp_path / "dir"):
            pass
    assert names(tmp_path) == ["dir", "plain"]


def test_signal_handlers_only_while_a_temporary_exists(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    before_int = signal.getsignal(signal.SIGINT)
    with staged_file(tmp_path / "a.txt") as tmp:
        assert signal.getsignal(signal.SIGTERM) is not before
        tmp.write_text("x")
    assert signal.getsignal(signal.SIGTERM) is before
    assert signal.getsignal(signal.SIGINT) is before_int


def _run(code: str, cwd, umask=0o022):
    script = textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", f"import os; os.umask({umask}); " + script],
                          cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755),
                                                        (0o027, 0o640, 0o750),
                                                        (0o002, 0o664, 0o775)])
def test_outputs_honour_the_umask(tmp_path, umask, file_mode, dir_mode):
    done = _run("""
from popkin._output import staged_folder, write_file
write_file("single.csv", "x")
with staged_folder("fit") as s:
    (s / "ID_1").mkdir()
    (s / "ID_1" / "report.pdf").write_bytes(b"%PDF")
""", tmp_path, umask)
    assert done.returncode == 0, done.stderr
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)
    assert mode(tmp_path / "single.csv") == file_mode
    assert mode(tmp_path / "fit") == dir_mode
    assert mode(tmp_path / "fit" / "ID_1") == dir_mode
    assert mode(tmp_path / "fit" / "ID_1" / "report.pdf") == file_mode


_INTERRUPTED_WRITE = """
import os, signal, sys, time
from popkin._output import staged_file, staged_folder
# as in a terminal, whatever the disposition the tests were started with (a background job
# starts with SIGINT ignored)
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
with staged_folder("fit") as s:
    (s / "summary.csv").write_text("x")
    with staged_file("table.csv") as t:
        t.write_text("half")
        os.kill(os.getpid(), getattr(__import__("signal"), sys.argv[1]))
        time.sleep(30)
"""


def test_sigterm_during_a_write_removes_the_temporaries_and_ends_the_process(tmp_path):
    done = subprocess.run([sys.executable, "-c", _INTERRUPTED_WRITE, "SIGTERM"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGTERM
    assert names(tmp_path) == []


def test_sigint_during_a_write_removes_the_temporaries_and_raises_keyboard_interrupt(tmp_path):
    done = subprocess.run([sys.executable, "-c", _INTERRUPTED_WRITE, "SIGINT"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    # Python ends an uncaught KeyboardInterrupt by the signal itself
    assert done.returncode == -signal.SIGINT and "KeyboardInterrupt" in done.stderr
    assert names(tmp_path) == []


def test_an_ignored_signal_during_a_write_changes_nothing(tmp_path):
    """A process that ignores SIGINT (nohup, a background job) finishes its write when one
    comes: popkin's clean-up must not turn an ignored signal into lost output."""
    done = subprocess.run([sys.executable, "-c", """
import os, signal
from popkin._output import staged_file
signal.signal(signal.SIGINT, signal.SIG_IGN)
with staged_file("table.csv") as t:
    t.write_text("half")
    os.kill(os.getpid(), signal.SIGINT)
    t.write_text("whole")
assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
"""], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert names(tmp_path) == ["table.csv"]
    assert (tmp_path / "table.csv").read_text() == "whole"


def test_a_failed_write_removes_the_folders_it_created(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_file(tmp_path / "a" / "b" / "table.csv"):
            raise RuntimeError
    with pytest.raises(RuntimeError):
        with staged_folder(tmp_path / "c" / "fit"):
            raise RuntimeError
    assert names(tmp_path) == []
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError):
        with staged_file(tmp_path / "kept" / "new" / "x.csv"):
            raise RuntimeError
    assert names(tmp_path) == ["kept"] and names(tmp_path / "kept") == []
