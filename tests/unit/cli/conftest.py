"""One model catalog (tokenizer load) for all CLI tests that start in-process services."""

from __future__ import annotations

import pytest

from llmserve.gateway.routing.catalog import ModelCatalog
from tests.support.stack import MODEL


@pytest.fixture(scope="session")
def catalog() -> ModelCatalog:
    return ModelCatalog.load([MODEL])
