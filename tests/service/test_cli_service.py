"""``popkin serve`` and ``popkin users`` on the command line: accounts made, bad settings
refused with one line and exit 2."""

from __future__ import annotations

import io
import sys

import pytest

from popkin.cli import main
from popkin.service.server import ensure_admin, list_accounts


def _run(capsys, monkeypatch, argv, stdin: str | None = None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_users_add_list_and_token(tmp_path, capsys, monkeypatch):
    db = f"sqlite:///{tmp_path / 's.db'}"
    code, out, _ = _run(capsys, monkeypatch, ["users", "add", "ann", "--role", "pharmacist",
                                              "--password-stdin", "--db", db],
                        "a long enough password\n")
    assert code == 0 and "added ann (pharmacist)" in out
    code, out, _ = _run(capsys, monkeypatch, ["users", "list", "--db", db])
    assert out.splitlines() == ["ann\tpharmacist\tactive"]
    code, out, _ = _run(capsys, monkeypatch, ["users", "token", "ann", "--db", db])
    assert code == 0 and out.startswith("pk_") and len(out.strip()) > 30


@pytest.mark.parametrize("argv, stdin, message", [
    (["users", "add", "ann", "--role", "viewer", "--password-stdin"], "short\n",
     "at least 10 characters"),
    (["users", "add", "../etc", "--role", "viewer", "--password-stdin"], "long enough pw 1\n",
     "user name '../etc'"),
    (["users", "add", "ann", "--role", "viewer"], "", "no terminal to ask for the password"),
    (["users", "token", "nobody"], None, "no active user 'nobody'"),
    (["users", "list", "--db", "mysql://x/y"], None, "'mysql' databases are not supported"),
    (["users", "list", "--db", "sqlite://"], None, "in-memory SQLite"),
    (["users", "list", "--db", "not a url"], None, "is not a database URL"),
    (["serve", "--db", "sqlite://", "--port", "8123"], None, "in-memory SQLite"),
    (["serve", "--host", "not-an-address"], None, "is not an IP address"),
])
def test_bad_settings_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch, argv, stdin,
                                              message):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, monkeypatch, argv, stdin)
    assert code == 2, (out, err)
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_a_name_taken_is_refused(tmp_path, capsys, monkeypatch):
    db = f"sqlite:///{tmp_path / 's.db'}"
    argv = ["users", "add", "ann", "--role", "viewer", "--password-stdin", "--db", db]
    assert _run(capsys, monkeypatch, argv, "long enough pw 1\n")[0] == 0
    code, _, err = _run(capsys, monkeypatch, argv, "long enough pw 2\n")
    assert code == 2 and "exists already" in err


def test_the_first_admin_gets_a_password_shown_once(tmp_path):
    db = f"sqlite:///{tmp_path / 's.db'}"
    made = ensure_admin(db, "root-admin", None)
    assert made is not None and len(made) >= 16
    assert ensure_admin(db, "root-admin", None) is None          # exists: nothing new
    assert list_accounts(db) == [("root-admin", "admin", True)]
    with pytest.raises(ValueError, match="is a viewer, not an admin"):
        from popkin.service.server import add_account
        add_account(db, "vic", "viewer", "long enough pw 1")
        ensure_admin(db, "vic", None)
