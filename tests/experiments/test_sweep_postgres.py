"""Two sweep workers with separate output folders (as on two machines) share a study in PostgreSQL.

A throw-away PostgreSQL server is started inside the test (initdb + pg_ctl as the `postgres`
user, Unix socket only, in a temporary folder) and stopped at the end. Skipped when the server
binaries or the `postgres` user are absent.
"""

from __future__ import annotations

import csv
import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cxrlab.config import RunConfig


def _pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return os.path.dirname(found[-1])
    path = shutil.which("pg_ctl")
    return os.path.dirname(path) if path else None


@pytest.fixture()
def postgres_url():
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed")
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no `postgres` system user to run a throw-away server as")
    root = Path(tempfile.mkdtemp(prefix="cxr-pg-"))  # pytest's tmp folders are private to root
    os.chmod(root, 0o777)
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    os.chown(sock, user.pw_uid, user.pw_gid)
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if os.geteuid() != 0 and os.geteuid() != user.pw_uid:
        pytest.skip("needs root (to run the server as `postgres`) or the postgres user")
    port = 20000 + os.getpid() % 20000
    subprocess.run(
        [*as_pg, f"{bindir}/initdb", "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    opts = f"-k {sock} -p {port} -c listen_addresses=''"
    subprocess.run(
        [*as_pg, f"{bindir}/pg_ctl", "-D", str(data), "-o", opts, "-w", "-l", str(root / "log"), "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg2://postgres@/postgres?host={sock}&port={port}"
    finally:
        subprocess.run(
            [*as_pg, f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_a_postgres_study(postgres_url, tmp_path, base_yaml):
    import optuna

    base = RunConfig.load(base_yaml).override(["train.epochs=2", "eval.bootstrap=50"])
    base.save(tmp_path / "base2.yaml")
    outs = [tmp_path / "machine-a", tmp_path / "machine-b"]
    cmd = [
        sys.executable,
        "-m",
        "cxrlab",
        "sweep",
        "--config",
        str(tmp_path / "base2.yaml"),
        "--param",
        "lr=1e-3,1e-2",
        "--param",
        "dropout=0.2,0.5",
        "--no-prune",
        "--storage",
        postgres_url,
        "--study",
        "pg-test",
    ]
    run_workers(cmd, outs)
    trials = optuna.load_study(study_name="pg-test", storage=postgres_url).get_trials()
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({(t.params["lr"], t.params["dropout"]) for t in trials}) == 4
    # Each machine wrote only its own trial folders; the database knows them all.
    folders = {t.user_attrs["run"] for t in trials}
    assert all(os.path.isdir(f) for f in folders)
    assert sum(len(list((o / "trials").iterdir())) if (o / "trials").is_dir() else 0 for o in outs) == 4
    last = max(outs, key=lambda o: (o / "sweep.csv").stat().st_mtime)
    assert len(list(csv.DictReader((last / "sweep.csv").open()))) == 4


def run_workers(cmd: list[str], outs: list) -> None:
    """Start ``cmd --out OUT`` for every folder at once (one worker each, as on separate machines) and
    require every one to succeed."""
    workers = [
        subprocess.Popen([*cmd, "--out", str(o)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for o in outs
    ]
    for w in workers:
        _, err = w.communicate(timeout=900)
        assert w.returncode == 0, err
