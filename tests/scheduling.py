"""How ``make test`` spreads the suite over its test processes: whole modules, and the modules that share a stack
together, so that each stack starts once.

pytest-xdist's default sends tests one by one to whichever process is free. A module-scoped stack then starts in
every process that gets one of the module's tests, and again each time a process comes back to the module after
another one (pytest tears a module's fixtures down when the next test is from another module): the outage tests
started four stacks that way. Here a unit of work is a module, or a group of modules that share a session-scoped
stack (``GROUPS``); a process runs its units whole, one after another, so a stack starts once per group.
"""

from __future__ import annotations

from typing import Any

from xdist.scheduler import LoadScopeScheduling

#: Modules that share one stack of a kind of their own (a session-scoped fixture in their conftest.py): one unit of
#: work, so that one process starts that stack once. The rest of the suite goes module by module.
GROUPS = {
    "outages": ["tests/worker/test_outages.py", "tests/worker/test_outage_budget.py", "tests/worker/test_requests.py",
                "tests/worker/test_handoff.py"],
    "interrupt": ["tests/worker/test_interrupt_resume.py", "tests/worker/test_cancel_expiry_retries.py"],
    "compat": ["tests/lambdas/test_compat_sample.py", "tests/lambdas/test_compat_webui.py",
               "tests/lambdas/test_webuiapi.py"],
}
GROUP_OF = {module: group for group, modules in GROUPS.items() for module in modules}


class StackScheduling(LoadScopeScheduling):
    """``--dist loadscope`` with a module, or a group of modules, as the scope."""

    def __init__(self, config: Any, log: Any = None) -> None:
        super().__init__(config, log)
        config.option.loadscopereorder = False  # keep the collection's order: the longest units first

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        return GROUP_OF.get(module, module)
