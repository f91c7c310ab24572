"""Fixtures of the deployment files' tests (test_compose.py, test_nginx.py)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.operations.deployment import COMPOSE


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded
