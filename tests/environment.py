"""Where the tests run: the checkout they test, and what a missing service means here (a
skip on a laptop, a failure in CI)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(message: str) -> NoReturn:
    """Skip outside CI; in CI a missing service or tool is a failure, never a silent skip."""
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
