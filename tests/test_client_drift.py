"""The committed OpenAPI document (clients/typescript/openapi.json: the TypeScript client's and
the docs' HTTP reference's source) is what the app serves. scripts/ci_client.sh also
regenerates the client from it and fails on drift; this check needs no Node."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_committed_openapi_document_is_what_the_app_serves():
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "dump_openapi.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr + "\n(run: python scripts/dump_openapi.py)"


def test_every_operation_of_the_document_is_in_the_generated_client():
    import json

    doc = json.loads((ROOT / "clients" / "typescript" / "openapi.json").read_text())
    schema = (ROOT / "clients" / "typescript" / "src" / "schema.ts").read_text()
    missing = [p for p in doc["paths"] if f'"{p}": {{' not in schema]
    assert not missing, f"src/schema.ts lacks {missing}: run scripts/ci_client.sh"
