"""Ops tests need Debian tools the Makefile's `sysdeps` target installs (docker-compose,
chromium). Absent locally: skip; absent with CI=true: fail."""
from __future__ import annotations

import os
import shutil

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def require_tool(path_or_name: str) -> str:
    found = shutil.which(path_or_name)
    if found:
        return found
    msg = f"{path_or_name} is not installed (run `make sysdeps`)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg + " and CI=true requires it")
    pytest.skip(msg)
