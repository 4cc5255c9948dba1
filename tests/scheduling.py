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

#: Modules that share one stack (a session-scoped fixture: ``stack`` in tests/conftest.py for "default", one of
#: their conftest.py for the others): one unit of work, so that one process starts that stack once. The rest of
#: the suite goes module by module.
GROUPS = {
    "default": ["tests/client/test_async_client.py", "tests/client/test_cli.py", "tests/client/test_client.py",
                "tests/lambdas/test_api.py", "tests/lambdas/test_cancel_api.py", "tests/lambdas/test_plugin_schemas.py",
                "tests/lambdas/test_submit_sweep_stack.py", "tests/worker/test_e2e.py", "tests/worker/test_families.py",
                "tests/worker/test_formats_stack.py",
                "tests/worker/test_preload.py",
                "tests/worker/test_progress.py", "tests/worker/test_webhooks.py", "tests/test_zygote.py"],
    "outages": ["tests/worker/test_handoff.py", "tests/worker/test_outages.py", "tests/worker/test_outage_budget.py",
                "tests/worker/test_requests.py", "tests/worker/test_webhook_kill.py"],
    "interrupt": ["tests/worker/test_interrupt_resume.py", "tests/worker/test_cancel_expiry_retries.py",
                  "tests/worker/test_shutdown_deadline.py"],
    "compat": ["tests/lambdas/test_compat_sample.py", "tests/lambdas/test_compat_webui.py",
               "tests/lambdas/test_webuiapi.py", "tests/lambdas/test_webui_flux.py",
               "tests/lambdas/test_sdapi_webuiapi.py", "tests/lambdas/test_webuiapi_features.py",
               "tests/lambdas/test_extras_webui.py", "tests/lambdas/test_controlnet_routes.py",
               "tests/lambdas/test_webuiapi_sdupscale.py", "tests/lambdas/test_comfy_stack.py",
               "tests/lambdas/test_comfy_images_stack.py"],
}
GROUP_OF = {module: group for group, modules in GROUPS.items() for module in modules}
#: The longest units (minutes each on two cores, measured with --durations), dealt out first so that they overlap
#: instead of ending the run alone. "outages" is the longest (about 4 minutes, mostly waiting out outages).
FIRST = ["outages", "tests/kit/test_plugin_kit.py", "interrupt", "tests/pipelines/test_schedulers.py",
         "tests/models/test_nodecache.py", "tests/models/test_tiers.py"]


def scope_of(nodeid: str) -> str:
    """The unit of work a test belongs to: its module's group, or its module."""
    module = nodeid.split("::", 1)[0]
    return GROUP_OF.get(module, module)


def order(nodeid: str) -> int:
    """Where a test's unit goes in the run: the units of ``FIRST`` in their order, then the rest."""
    scope = scope_of(nodeid)
    return FIRST.index(scope) if scope in FIRST else len(FIRST)


class StackScheduling(LoadScopeScheduling):
    """``--dist loadscope`` with a module, or a group of modules, as the scope."""

    def __init__(self, config: Any, log: Any = None) -> None:
        super().__init__(config, log)
        config.option.loadscopereorder = False  # keep the collection's order (``order``): the longest units first

    def _split_scope(self, nodeid: str) -> str:
        return scope_of(nodeid)
