from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
# The one place tests take their device from: ATBSN_TEST_DEVICE=cuda runs the device tests on a GPU.
DEVICE = torch.device(os.environ.get("ATBSN_TEST_DEVICE", "cpu"))


@pytest.fixture
def device() -> torch.device:
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        pytest.fail("ATBSN_TEST_DEVICE=cuda but no CUDA device is visible")
    return DEVICE


needs_cuda = pytest.mark.skipif(DEVICE.type != "cuda", reason="a CUDA test: run with ATBSN_TEST_DEVICE=cuda")


def shared_path(*parts: str) -> Path:
    """A path inside ../shared, or a clean skip when the test data is not beside the clone."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs {p} (test data beside the repository)")
    return p


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
