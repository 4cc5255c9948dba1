"""`make test-cpus`: the pipeline, model and resume tests under each CPU kernel set and thread count.

torch picks its CPU kernels by instruction set, and a reduction split over more threads sums in another order, so
a test that compares two *different* computations of the same math bit for bit passes on one machine and fails
on another (an AMD EPYC failed `make test` on exactly that). One machine can play several: ``ATEN_CPU_CAPABILITY``
narrows torch's kernels to ``default`` or ``avx2`` (``avx512`` only where the CPU has it; without it those cells
are skipped with a note), and ``OMP_NUM_THREADS`` 1 and 2 changes how reductions are split (tests/conftest.py
only sets it by default, so the value here holds, for the test processes and the workers they start). Every cell
runs to the end, then a table shows each cell's counts and time; the exit status is 1 if any cell failed.

Byte identity that the product promises (a resume, the same seed on one worker) must hold in every cell; a failure
in one cell only is a test comparing two computations exactly, or a product result that depends on the CPU.

    python -m tests.harness.cpu_matrix [--cells default/1,avx2/2] [--workers 2] [pytest paths or options...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The pipelines (their resume tests and the plugin kit's included), the models, and resume across real workers.
TARGETS = ["tests/pipelines", "tests/models", "tests/worker/test_interrupt_resume.py"]
CAPABILITIES = ("default", "avx2", "avx512")
THREADS = (1, 2)


@dataclass
class Cell:
    capability: str
    threads: int
    rc: int = -1
    counts: tuple[int, int, int, int] = (0, 0, 0, 0)  # passed, failed, errors, skipped
    seconds: float = 0.0
    effective: str = "?"  # the capability torch really used

    @property
    def name(self) -> str:
        return f"{self.capability}/{self.threads}"


def has_avx512() -> bool:
    """avx512f among the CPU's flags; torch's avx512 kernels need it (elsewhere they would fall back silently)."""
    try:
        return any(line.startswith("flags") and " avx512f" in line
                   for line in Path("/proc/cpuinfo").read_text().splitlines())
    except OSError:
        return False


def environment(cell: Cell) -> dict[str, str]:
    return {**os.environ, "ATEN_CPU_CAPABILITY": cell.capability, "OMP_NUM_THREADS": str(cell.threads)}


def counts(junit: Path) -> tuple[int, int, int, int]:
    """Passed, failed, errors and skipped from pytest's JUnit report (all zero if it wrote none)."""
    try:
        suite = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return 0, 0, 0, 0
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, failed, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    return tests - failed - errors - skipped, failed, errors, skipped


def run(cell: Cell, workers: int, pytest_args: list[str]) -> None:
    """One cell: pytest in a process of its own with the cell's environment, its output streamed."""
    env = environment(cell)
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    cell.effective = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                                    cwd=ROOT).stdout.strip() or "?"
    print(f"\n=== ATEN_CPU_CAPABILITY={cell.capability} (torch uses {cell.effective}) "
          f"OMP_NUM_THREADS={cell.threads}", flush=True)
    with tempfile.TemporaryDirectory(prefix="cpu-matrix-") as tmp:
        junit = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                   f"--junitxml={junit}", *(["-n", str(workers)] if workers > 1 else []), *pytest_args]
        start = time.monotonic()
        cell.rc = subprocess.run(command, env=env, cwd=ROOT).returncode
        cell.seconds = time.monotonic() - start
        cell.counts = counts(junit)


def table(cells: list[Cell]) -> str:
    lines = [f"{'cell (capability/threads)':<27}{'torch uses':<12}{'passed':>8}{'failed':>8}{'errors':>8}"
             f"{'skipped':>9}{'time':>9}  result"]
    for c in cells:
        passed, failed, errors, skipped = c.counts
        lines.append(f"{c.name:<27}{c.effective:<12}{passed:>8}{failed:>8}{errors:>8}{skipped:>9}"
                     f"{c.seconds:>8.0f}s  {'ok' if c.rc == 0 else f'FAILED (exit {c.rc})'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", help="only these cells, e.g. default/1,avx2/2 (capability/threads)")
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist processes per cell (1: none)")
    args, pytest_args = parser.parse_known_args(argv)
    capabilities = [c for c in CAPABILITIES if c != "avx512" or has_avx512()]
    if "avx512" not in capabilities:
        print("note: this CPU has no avx512f; the avx512 cells are skipped", flush=True)
    cells = [Cell(c, t) for c in capabilities for t in THREADS]
    if args.cells:
        wanted = set(args.cells.split(","))
        cells = [c for c in cells if c.name in wanted]
        if not cells:
            parser.error(f"no such cell among {', '.join(f'{c}/{t}' for c in capabilities for t in THREADS)}")
    for cell in cells:
        run(cell, args.workers, pytest_args or TARGETS)
    print("\n" + table(cells), flush=True)
    return 0 if all(c.rc == 0 for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
