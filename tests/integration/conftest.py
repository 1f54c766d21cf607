"""Fixtures shared by integration modules: one `svdq api` server for the API and console tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.apiserver import Api, serve_api


@pytest.fixture(scope="session")
def api(svdq_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    yield from serve_api(svdq_env, tmp_path_factory.mktemp("api"))
