"""docs/comfyui.md's node tables are the code's (``python -m tests.harness.comfy_doc`` writes them)."""

from __future__ import annotations

from tests.harness.comfy_doc import BEGIN, DOC, END, rendered


def test_the_docs_node_tables_are_the_codes() -> None:
    doc = DOC.read_text()
    assert BEGIN in doc and END in doc
    assert rendered(doc) == doc, "docs/comfyui.md's node tables are stale: run python -m tests.harness.comfy_doc"
