"""The JSON Schema of devices.yaml, for editors (``villagecast devices schema``)."""

from __future__ import annotations

from typing import Any

from content_queue.registry import RegistryFile

__all__ = ["registry_json_schema"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def registry_json_schema() -> dict[str, Any]:
    """The schema of RegistryFile with ``$schema`` and a title, ready for ``json.dumps``."""
    schema = RegistryFile.model_json_schema()
    return {
        "$schema": SCHEMA_DIALECT,
        **schema,
        "title": "villagecast devices.yaml",
        "description": (
            "Townships, villages and their endpoints. Secrets are never written here: "
            "*_env fields name the environment variable that holds them."
        ),
    }
