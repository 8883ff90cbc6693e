"""The library leaves its host process alone; the command line owns the process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

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


@pytest.mark.parametrize(("flags", "env", "native"), [
    ({"avx512f", "avx512_vnni", "avx512_bf16"}, {}, True),
    ({"avx512f", "amx_bf16"}, {}, True),
    ({"avx512f", "avx512_vnni"}, {}, False),  # AVX-512 without bf16 (most cloud servers): oneDNN would emulate it
    ({"avx2", "fma"}, {}, False),
    ({"avx512f", "avx512_bf16"}, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}, False),  # the CI's cap
    ({"avx512f", "avx512_bf16"}, {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}, False),
    ({"avx512f", "avx512_bf16"}, {"ATEN_CPU_CAPABILITY": "avx2"}, False),
    ({"avx512f", "avx512_bf16"}, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, True),  # a cap above bf16 keeps it
])
def test_bf16_is_native_only_on_cpus_that_compute_it_and_caps_are_honoured(monkeypatch, flags, env, native):
    """``--precision auto`` takes bf16 only where the CPU has AVX512-BF16 or AMX and no cap rules them out."""
    from atbsn import runtime

    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(runtime, "cpu_flags", lambda: flags)
    cpu = torch.device("cpu")
    ok, why = runtime.bf16_support(cpu)
    assert ok is native and why
    assert runtime.resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert runtime.resolve_precision("fp32", cpu) == "fp32"
    if "ONEDNN_MAX_CPU_ISA" in env and not native:
        assert env["ONEDNN_MAX_CPU_ISA"] in why  # the reason names the cap


def test_the_machine_s_own_answer_follows_its_caps():
    """Under CI's caps (this process's environment) bf16 is never native; without them it is what the flags say."""
    from atbsn import runtime

    ok, _ = runtime.bf16_support(torch.device("cpu"))
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ("AVX2", "AVX512_CORE_VNNI")
    flags = runtime.cpu_flags()
    if capped:
        assert not ok
    elif flags is not None:
        assert ok == bool(runtime.BF16_FLAGS & flags)
