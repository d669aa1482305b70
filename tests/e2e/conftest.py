"""Fixtures of the official-client suite (defined in ``official.py``), visible to every e2e
module without importing them one by one."""

from official import admin, official_home, ostack, user  # noqa: F401
