"""docs/comfyui.md's node tables, made from the node table the API checks graphs with
(``runtime.contract.comfy.table``): ``python -m tests.harness.comfy_doc`` writes them into the doc, and
tests/comfy/test_comfy_doc.py fails when the doc and the code differ."""

from __future__ import annotations

import re
from pathlib import Path

from runtime.contract.comfy.table import RUNS, node_rows

DOC = Path(__file__).resolve().parents[2] / "docs" / "comfyui.md"
BEGIN, END = "<!-- nodes: made by python -m tests.harness.comfy_doc -->", "<!-- end of nodes -->"


def tables() -> str:
    """The nodes spotgen runs, then the ones declared (``/object_info`` does not list them yet)."""
    def table(rows: list[tuple[str, list[str], list[str]]]) -> list[str]:
        lines = ["| node | inputs | outputs |", "|---|---|---|"]
        lines += [f"| `{name}` | {', '.join(f'`{i}`' for i in inputs)} | {', '.join(f'`{o}`' for o in outputs)} |"
                  for name, inputs, outputs in rows]
        return lines

    rows = node_rows()
    runs = [row for row in rows if row[0] in RUNS]
    later = [row for row in rows if row[0] not in RUNS]
    text = [f"**Run today** ({len(runs)} nodes):", "", *table(runs)]
    if later:
        text += ["", f"**Declared, not run yet** ({len(later)}: a graph with one is refused with ComfyUI's "
                 "`missing_node_type`, saying so):", "", *table(later)]
    return "\n".join(text)


def rendered(doc: str) -> str:
    """``doc`` with the text between the markers made again."""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    return pattern.sub(lambda _m: f"{BEGIN}\n{tables()}\n{END}", doc)


if __name__ == "__main__":
    DOC.write_text(rendered(DOC.read_text()))
