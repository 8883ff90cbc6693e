"""The library leaves its host process alone; the command line owns the process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from atbsn.errors import AtbsnError
from atbsn.runtime import autocast, check_precision, resolve_device


def test_importing_atbsn_changes_no_environment_variable():
    code = "import os; before = dict(os.environ); import atbsn; print(dict(os.environ) == before)"
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "True"


def test_the_command_turns_on_huge_pages_unless_the_user_chose():
    code = ("import os, sys; sys.argv = ['atbsn', '--version']\n"
            "from atbsn.cli import entry\n"
            "try:\n    entry()\nexcept SystemExit:\n    print(os.environ.get('THP_MEM_ALLOC_ENABLE'))")
    for preset, expected in ((None, "1"), ("0", "0")):
        env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
        if preset is not None:
            env["THP_MEM_ALLOC_ENABLE"] = preset
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        assert out.stdout.strip().splitlines()[-1] == expected


def test_device_and_precision_errors_are_one_line():
    import torch

    with pytest.raises(AtbsnError, match="unknown device"):
        resolve_device("tpu")
    with pytest.raises(AtbsnError, match="fp16 needs a CUDA device"):
        autocast(torch.device("cpu"), "fp16")
    with pytest.raises(AtbsnError, match="unknown precision"):
        check_precision("fp64")


def test_progress_in_a_log_file_is_a_few_lines_not_one_per_step(capsys):
    from atbsn.runtime import progress_bar

    with progress_bar(total=2000, desc="train") as bar:  # pytest's stderr is not a terminal
        for _ in range(2000):
            bar.update()
    err = capsys.readouterr().err
    assert err.count("\r") + err.count("\n") <= 4 and "2000/2000" in err
