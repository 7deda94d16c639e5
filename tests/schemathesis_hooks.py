"""Schemathesis hooks for tests/test_openapi.py: tus bodies are raw bytes."""

import schemathesis

schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
