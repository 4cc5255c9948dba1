"""docs/migrating.md's field tables name every field of WebUI's txt2img and img2img bodies that spotgen accepts.

The table is what people read to know what a field does here; a field added to ``webui_schema`` without a row, or
a row for a field that is not accepted, fails.
"""

from __future__ import annotations

import re
from pathlib import Path

from runtime.contract.webui_schema import _TYPES

DOC = Path(__file__).resolve().parents[2] / "docs" / "migrating.md"


def _table() -> dict[str, set[str]]:
    text = DOC.read_text()
    section = text.split("### Every field of a WebUI body", 1)[1].split("\n### ", 1)[0]
    rows: dict[str, set[str]] = {"txt2img": set(), "img2img": set()}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1] in ("both", "txt2img", "img2img"):
            for name in re.findall(r"`([a-z_0-9]+)`", cells[0]):
                for task in (("txt2img", "img2img") if cells[1] == "both" else (cells[1],)):
                    rows[task].add(name)
    return rows


def test_the_field_table_names_every_accepted_field_of_each_task_and_no_other() -> None:
    rows = _table()
    for task in ("txt2img", "img2img"):
        accepted = set(_TYPES[task])
        assert accepted - rows[task] == set(), f"{task}: fields without a row"
        assert rows[task] - accepted == set(), f"{task}: rows for fields it does not accept"
