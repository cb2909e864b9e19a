"""External tools a test needs (promtool, prometheus): skipped without them, except in CI."""

from __future__ import annotations

import os
import shutil

import pytest


def require(tool: str, package: str = "prometheus", in_ci: bool = True) -> str:
    """The tool's path. Without it: a skip on a developer's machine, a failure where CI is set
    (.ci/run sets it), since CI installs the Debian package and the test must run there; with
    in_ci=False (a tool CI may fail to install) a skip there too."""
    path = shutil.which(tool)
    if path:
        return path
    message = f"{tool} not installed (Debian package {package})"
    if in_ci and os.environ.get("CI"):
        pytest.fail(f"{message}: CI must run this test")
    pytest.skip(message)
