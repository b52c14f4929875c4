"""coop_backup: a postgres host's backups, for Dagster's `backup/<host>` assets
(infra_assets/operations/backups.py), which call these functions through salt.

    dump(keep_days)            every database, `pg_dump -Fc`, with the row count of every
                               table taken in the dump's own snapshot; each dump and its counts
                               pushed to the salt master (the support server keeps the copies
                               off this host); dumps older than `keep_days` removed here
    latest()                   each database's latest dump here
    restore_check(dump)        the dump restored into a scratch database on this host, and each
                               non-empty table's row count compared with the counts taken in the
                               dump's snapshot; the scratch database dropped
    prune(root, keep_days)     on the master's host: its copies older than `keep_days` removed

The snapshot: one psql session opens a REPEATABLE READ transaction and exports its snapshot
(`pg_export_snapshot()`); the counts are read in that transaction, and `pg_dump --snapshot`
dumps exactly what it sees, so counts and dump are of one moment.

Files: /var/backups/coop/postgres/<database>/<UTC time>.dump and .counts.json (postgres's,
mode 0600, in folders of mode 0700). Everything runs as the `postgres` user (peer login).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path("/var/backups/coop/postgres")
END = "__coop_end__"
STAMP = "%Y%m%dT%H%M%SZ"
SCRATCH_PREFIX = "coop_restore_check_"
DUMP_TIMEOUT_S = 3600  # one database's pg_dump, or its restore

__virtualname__ = "coop_backup"


def __virtual__():
    return __virtualname__


def _stale(module_sha256: str) -> dict | None:
    """{"stale_module": <this copy's sha256>} when the caller's module is another one."""
    if not module_sha256:
        return None
    with open(__file__, "rb") as handle:
        mine = hashlib.sha256(handle.read()).hexdigest()
    return None if mine == module_sha256 else {"stale_module": mine}


class BackupError(RuntimeError):
    pass


def _as_postgres(argv: list[str], **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(
        ["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, **kw
    )
    if out.returncode != 0:
        raise BackupError(f"{argv[0]} exited {out.returncode}: {_said(out.stderr or out.stdout)}")
    return out


def _said(text: str) -> str:
    """PostgreSQL's last error lines, without the ones that quote data (CONTEXT: a COPY's row,
    DETAIL: a key's value): what reaches Dagster and the chat is never a row of a table."""
    lines = [
        line for line in text.strip().splitlines()
        if not line.lstrip().startswith(("CONTEXT:", "DETAIL:", "HINT:", "LINE ", "QUERY:"))
    ]  # fmt: skip
    return " / ".join(lines[-3:])


class Session:
    """One psql session, asked one statement at a time (its answer: the rows' lines).

    It runs as `postgres`, in a database an app owns: so its search_path is pg_catalog alone
    (an app's own `format` or `count` in `public` is never called), every function it calls is
    named with its schema, and `role` (no superuser) is what it reads as. Statements and locks
    time out instead of holding the job (and the snapshot) forever."""

    def __init__(self, database: str, role: str):
        self.errors = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t",
             "-v", "ON_ERROR_STOP=1", "-d", database],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors, text=True,
            env={**os.environ, "PGOPTIONS": "-c search_path=pg_catalog -c lock_timeout=60s"
                                            " -c statement_timeout=1h"},
        )  # fmt: skip
        self.ask(f"SET ROLE {role};")

    def ask(self, sql: str) -> list[str]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{sql}\n\\echo {END}\n")
        self.proc.stdin.flush()
        lines = []
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if line == END:
                return lines
            lines.append(line)
        self.errors.seek(0)
        raise BackupError(f"psql ended: {_said(self.errors.read()) or 'no answer'}"
                          f" (asked: {sql[:80]})")  # fmt: skip

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.errors.close()


def databases() -> list[str]:
    query = (
        "SELECT datname FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres'"
        r" AND datname NOT LIKE 'coop\_restore\_check\_%' ORDER BY 1"  # not the scratch ones
    )
    out = _as_postgres(["psql", "-X", "-A", "-t", "-c", query])
    return [line for line in out.stdout.splitlines() if line]


TABLES = (
    "SELECT pg_catalog.format('%I.%I', schemaname, tablename) FROM pg_catalog.pg_tables"
    " WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1;"
)
# Who counts: the dump's rows, read as a role that reads everything (pg_read_all_data, past
# row security) and is no superuser; the restore's, as the scratch database's owner.
READER = "coop_backup_reader"
RESTORER = "coop_restore_check"
ROLES = (
    f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{READER}')"
    f" THEN CREATE ROLE {READER} NOLOGIN BYPASSRLS IN ROLE pg_read_all_data; END IF;"
    f" IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{RESTORER}')"
    f" THEN CREATE ROLE {RESTORER} NOLOGIN; END IF; END $$;"
)


def _roles() -> None:
    _as_postgres(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", ROLES])


def _counts(session: Session) -> dict[str, int]:
    tables = session.ask(TABLES)
    return {t: int(session.ask(f"SELECT pg_catalog.count(*) FROM {t};")[0]) for t in tables}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _folder(database: str) -> Path:
    folder = ROOT / database
    for path in (ROOT.parent, ROOT, folder):
        path.mkdir(mode=0o700, exist_ok=True)
        os.chown(path, *_postgres_ids())
        path.chmod(0o700)
    return folder


def _postgres_ids() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def dump_one(database: str, stamp: str) -> dict:
    started = time.monotonic()
    folder = _folder(database)
    path = folder / f"{stamp}.dump"
    partial = folder / f"{stamp}.dump.partial"  # renamed once pg_dump has finished
    session = Session(database, READER)
    try:
        session.ask("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;")
        [snapshot] = session.ask("SELECT pg_catalog.pg_export_snapshot();")
        counts = _counts(session)
        try:
            _as_postgres(["pg_dump", "-Fc", f"--snapshot={snapshot}", "-d", database,
                          "-f", str(partial)], timeout=DUMP_TIMEOUT_S)  # fmt: skip
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        session.ask("COMMIT;")
    finally:
        session.close()
    partial.rename(path)
    counts_path = folder / f"{stamp}.counts.json"
    counts_path.write_text(json.dumps({"database": database, "counts": counts}, indent=1))
    os.chown(counts_path, *_postgres_ids())
    counts_path.chmod(0o600)
    path.chmod(0o600)
    return {
        "dump": str(path),
        "counts_file": str(counts_path),
        "size": path.stat().st_size,
        "sha256": _sha256(path),
        "tables": len(counts),
        "rows": sum(counts.values()),
        "counts": counts,
        "took_s": round(time.monotonic() - started, 2),
    }


def _prune(keep_days: int, now: datetime.datetime, root: Path = ROOT) -> list[str]:
    """Files older than `keep_days`, but never a database's newest dump (a database that is
    gone keeps its last one)."""
    removed = []
    newest = {folder: max((p.name.split(".", 1)[0] for p in folder.glob("*.dump")), default="")
              for folder in root.glob("*") if folder.is_dir()}  # fmt: skip
    for path in sorted(root.glob("*/*")):
        stamp = path.name.split(".", 1)[0]
        if stamp == newest.get(path.parent):
            continue
        try:
            when = datetime.datetime.strptime(stamp, STAMP).replace(tzinfo=datetime.UTC)
        except ValueError:
            continue
        if now - when > datetime.timedelta(days=keep_days):
            path.unlink()
            removed.append(str(path))
    return removed


def prune(root: str, keep_days: int, module_sha256: str = "") -> list[str] | dict:
    """Files under `root`/<database>/ older than `keep_days` (by the time in their names)
    removed: the master's copies (/var/cache/salt/master/minions/<host>/files/...)."""
    stale = _stale(module_sha256)
    if stale:
        return stale
    return _prune(int(keep_days), datetime.datetime.now(datetime.UTC), Path(root))


def dump(keep_days: int = 14, push: bool = True, module_sha256: str = "") -> dict:
    """Every database dumped, its counts beside it, pushed to the master; old dumps removed
    ({"error": why} when a step fails)."""
    stale = _stale(module_sha256)
    if stale:
        return stale
    try:
        return _dump(keep_days, push)
    except (BackupError, OSError, subprocess.SubprocessError) as err:
        return {"error": str(err)}


def _dump(keep_days: int, push: bool) -> dict:
    _roles()
    now = datetime.datetime.now(datetime.UTC)
    stamp = now.strftime(STAMP)
    done: dict[str, dict] = {}
    for database in databases():
        one = dump_one(database, stamp)
        if push:
            pushed = all(__salt__["cp.push"](p) for p in (one["dump"], one["counts_file"]))  # noqa: F821
            one["pushed"] = bool(pushed)
        done[database] = one
    return {"stamp": stamp, "databases": done, "pruned": _prune(int(keep_days), now)}


def restore_check(dump: str, module_sha256: str = "") -> dict:
    """`dump` restored into a scratch database; every non-empty table's count compared with
    the counts taken in the dump's snapshot (the .counts.json beside it). {"error": why} when
    it cannot be restored."""
    stale = _stale(module_sha256)
    if stale:
        return stale
    try:
        return _restore_check(Path(dump))
    except (BackupError, OSError, ValueError, KeyError, subprocess.SubprocessError) as err:
        return {"error": str(err)}


def _restore_check(path: Path) -> dict:
    expected = json.loads(path.with_name(path.name.replace(".dump", ".counts.json")).read_text())
    database = expected["database"]
    scratch = (SCRATCH_PREFIX + database)[:63]
    started = time.monotonic()
    _roles()
    _as_postgres(["dropdb", "--if-exists", scratch])
    # Owned by a role that is no superuser, which the restore runs as: the app's own code in
    # the dump (an index's expression, a default) runs as that role, never as postgres.
    _as_postgres(["createdb", "--owner", RESTORER, scratch])
    try:
        _as_postgres(["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error",
                      f"--role={RESTORER}", "-d", scratch, str(path)],
                     timeout=DUMP_TIMEOUT_S)  # fmt: skip
        session = Session(scratch, RESTORER)
        try:
            restored = _counts(session)
        finally:
            session.close()
    finally:
        _as_postgres(["dropdb", "--if-exists", scratch])
    compared = {t: n for t, n in expected["counts"].items() if n > 0}
    wrong = {t: {"dump": n, "restored": restored.get(t)} for t, n in compared.items()
             if restored.get(t) != n}  # fmt: skip
    return {
        "database": database,
        "dump": str(path),
        "tables": len(expected["counts"]),
        "compared": len(compared),
        "rows": sum(compared.values()),
        "mismatches": wrong,
        "took_s": round(time.monotonic() - started, 2),
    }


def latest(module_sha256: str = "") -> dict:
    """Each database's latest dump here: {database: path}."""
    stale = _stale(module_sha256)
    if stale:
        return stale
    found = {}
    for folder in sorted(p for p in ROOT.glob("*") if p.is_dir()):
        # a dump with its counts (a dump is renamed into place, then its counts written)
        dumps = sorted(d for d in folder.glob("*.dump") if d.with_suffix(".counts.json").exists())
        if dumps:
            found[folder.name] = str(dumps[-1])
    return found
