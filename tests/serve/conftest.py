"""Fixtures of the serving tests, which run a real tritonserver."""

from __future__ import annotations

import pytest

from vla_export.errors import EnvironmentProblem


@pytest.fixture(scope="session")
def triton_here():
    """The tritonserver binary (the nvidia-pytriton wheel's); the test skips, saying why, where there is none."""
    from vla_export.serve.server import find_triton

    try:
        return find_triton()
    except EnvironmentProblem as exc:
        pytest.skip(f"no tritonserver here: {exc}")
