"""Make the repository root importable (app/, worker/, models/) however pytest is started;
fixtures every test package may use."""
import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _require_tool(path_or_name: str) -> str:
    """A Debian tool the Makefile's `sysdeps` target installs (docker-compose, chromium).
    Absent locally: skip; absent with CI=true: fail."""
    found = shutil.which(path_or_name)
    if found:
        return found
    msg = f"{path_or_name} is not installed (run `make sysdeps`)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg + " and CI=true requires it")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def require_tool():
    return _require_tool
