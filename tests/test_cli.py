"""The `t5pegasus` command: help, version, and user errors as one line with a non-zero exit."""

import subprocess
import sys

import t5pegasus


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "t5pegasus", *args], capture_output=True, text=True, timeout=300)


def test_version_and_help():
    r = run_cli("--version")
    assert r.returncode == 0 and t5pegasus.__version__ in r.stdout
    r = run_cli("--help")
    assert r.returncode == 0 and "pretrain" in r.stdout


def test_unknown_subcommand_is_an_error():
    r = run_cli("frobnicate")
    assert r.returncode != 0 and "invalid choice" in r.stderr and "Traceback" not in r.stderr
