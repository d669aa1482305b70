"""Test helpers for the docker runtime: find the test engine or skip with a reason.

Tests use the engine named by ``BAI_TEST_DOCKER_HOST`` (e.g. ``unix:///tmp/bai-docker/docker.sock``,
what ``scripts/docker-engine.sh start`` prints) and the image ``BAI_TEST_DOCKER_IMAGE`` (default
``python:3.11-debian12``, built by ``scripts/build-images.sh``).
"""

from __future__ import annotations

import os

import pytest

DEFAULT_TEST_IMAGE = "python:3.11-debian12"


def test_image() -> str:
    return os.environ.get("BAI_TEST_DOCKER_IMAGE") or DEFAULT_TEST_IMAGE


test_image.__test__ = False  # type: ignore[attr-defined]  # not a test for pytest


async def docker_host_or_skip() -> str:
    """The engine URL when it answers and has the test image; otherwise ``pytest.skip``."""
    import aiodocker
    from aiodocker.exceptions import DockerError

    host = os.environ.get("BAI_TEST_DOCKER_HOST")
    if not host:
        pytest.skip("BAI_TEST_DOCKER_HOST is not set (scripts/docker-engine.sh start prints it)")
    image = test_image()
    try:
        async with aiodocker.Docker(url=host) as d:
            await d.version()
            try:
                await d.images.inspect(image)
            except DockerError as e:
                if e.status == 404:
                    pytest.skip(f"image {image} is not in the engine (run scripts/build-images.sh)")
                raise
    except (OSError, DockerError, ValueError) as e:
        pytest.skip(f"no Docker engine answers at {host}: {e}")
    return host
