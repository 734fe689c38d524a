"""``apt errors list/show/resolve/groups`` against a real store, and databases from older apt."""

import json
import sqlite3
from datetime import datetime, timedelta, timezone

from sqlalchemy import update
from sqlalchemy.orm import Session

from apt.errorstore import ErrorRecord, ErrorStore, parse_since
from core_cli import assert_one_line_error, run

#: The table as apt-core 0.x created it, before steps and resolution were stored.
OLD_SCHEMA = """
CREATE TABLE errors (
    id INTEGER NOT NULL, time DATETIME, type VARCHAR(64), message TEXT, context JSON, traceback TEXT,
    plugin VARCHAR(128), run_id VARCHAR(64), PRIMARY KEY (id))
"""


def seed(hours_ago: float, **fields) -> int:
    store = ErrorStore()
    error_id = store.record(**fields)
    moment = (datetime.now(timezone.utc) - timedelta(hours=hours_ago)).replace(tzinfo=None)
    with Session(store.engine) as session, session.begin():
        session.execute(update(ErrorRecord).where(ErrorRecord.id == error_id).values(time=moment))
    return error_id


def apt_errors(env, cwd, *args):
    result = run(["errors", *args], env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_empty_store_says_so(tmp_path, env):
    assert apt_errors(env, tmp_path, "groups") == "no errors recorded\n"
    assert apt_errors(env, tmp_path, "list") == "no errors recorded\n"
    assert apt_errors(env, tmp_path, "list", "--run", "abc") == "no errors match these filters\n"


def test_list_filters_show_and_resolve(tmp_path, env):
    old = seed(5, type="crash", message="ffn.boom raised RuntimeError: boom at step 7", plugin="ffn.boom",
               run_id="aaaa1111" * 4, step=7, traceback="Traceback (most recent call last):\nRuntimeError: boom")
    new = seed(0.5, type="crash", message="ffn.boom raised RuntimeError: boom at step 9", plugin="ffn.boom",
               run_id="bbbb2222" * 4, step=9)
    other = seed(0.1, type="nonfinite", message="non-finite loss at step 3", run_id="bbbb2222" * 4, step=3)

    lines = apt_errors(env, tmp_path, "list").splitlines()
    assert [line.split()[0] for line in lines] == [f"#{other}", f"#{new}", f"#{old}"]
    assert "bbbb2222 step 9" in lines[1] and "ffn.boom" in lines[1]
    recent = apt_errors(env, tmp_path, "list", "--since", "2h").splitlines()
    assert [line.split()[0] for line in recent] == [f"#{other}", f"#{new}"]
    run_only = apt_errors(env, tmp_path, "list", "--run", "aaaa1111", "--since", "1d").splitlines()
    assert [line.split()[0] for line in run_only] == [f"#{old}"]

    shown = apt_errors(env, tmp_path, "show", f"#{old}")
    assert "step:       7" in shown and "run:        " + "aaaa1111" * 4 in shown and shown.rstrip().endswith("boom")
    assert_one_line_error(run(["errors", "show", "999"], env=env, cwd=tmp_path), "show '999': no error with that id")
    assert_one_line_error(run(["errors", "list", "--since", "yesterday"], env=env, cwd=tmp_path),
                          "--since 'yesterday': expected a duration like 30m")

    assert apt_errors(env, tmp_path, "resolve", str(other)) == f"resolved 1 error: #{other}\n"
    assert [line.split()[0] for line in apt_errors(env, tmp_path, "list").splitlines()] == [f"#{new}", f"#{old}"]
    everything = apt_errors(env, tmp_path, "list", "--all").splitlines()
    assert everything[0].startswith(f"#{other}") and everything[0].endswith("(resolved)")
    assert_one_line_error(run(["errors", "resolve", str(other)], env=env, cwd=tmp_path),
                          f"resolve '{other}': no unresolved error")

    [group] = json.loads(apt_errors(env, tmp_path, "groups", "--json"))
    assert (group["count"], group["pattern"]) == (2, "ffn.boom raised RuntimeError: boom at step <*>")
    resolved = apt_errors(env, tmp_path, "resolve", group["pattern"])
    assert resolved == f"resolved 2 errors: #{old}, #{new}\n"
    assert apt_errors(env, tmp_path, "groups") == "no unresolved errors (3 resolved; --all shows them)\n"
    assert apt_errors(env, tmp_path, "list") == "no unresolved errors (3 resolved; --all shows them)\n"
    assert apt_errors(env, tmp_path, "groups", "--all").split()[:3] == ["2x", "crash", "ffn.boom"]


def test_database_of_an_older_apt_stays_readable(tmp_path, env, apt_home):
    apt_home.mkdir(parents=True)
    with sqlite3.connect(apt_home / "errors.db") as db:
        db.execute(OLD_SCHEMA)
        db.execute("INSERT INTO errors (time, type, message, context, traceback, plugin, run_id) VALUES "
                   "('2025-06-01 10:00:00.000000', 'hook_error', 'flaky raised in apt_step_end', '{}', '', "
                   "'flaky', 'cafe')")
    lines = apt_errors(env, tmp_path, "list").splitlines()
    assert len(lines) == 1 and lines[0].startswith("#1 2025-06-01T10:00:00 cafe") and "flaky" in lines[0]
    assert apt_errors(env, tmp_path, "list", "--since", "2025-05-31") == lines[0] + "\n"
    assert apt_errors(env, tmp_path, "resolve", "flaky raised") == "resolved 1 error: #1\n"
    with sqlite3.connect(apt_home / "errors.db") as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(errors)")}
        assert {"step", "resolved_at"} <= columns
        assert db.execute("SELECT message, resolved_at IS NOT NULL FROM errors").fetchall() == [
            ("flaky raised in apt_step_end", 1)]


def test_since_accepts_durations_and_dates():
    now = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
    assert parse_since("2h", now) == datetime(2026, 3, 1, 10, 0, tzinfo=timezone.utc)
    assert parse_since("90m", now) == datetime(2026, 3, 1, 10, 30, tzinfo=timezone.utc)
    assert parse_since("1d", now) == datetime(2026, 2, 28, 12, 0, tzinfo=timezone.utc)
    assert parse_since("2026-02-01T08:00", now) == datetime(2026, 2, 1, 8, 0, tzinfo=timezone.utc)
