"""The plugin kit, for the ML engineer writing a pipeline: run one in this process with the real registry and model
store (``local``), scaffold a plugin package (``scaffold``), export plugins' input schemas for the API
(``schema``), and the ``spotgen run`` and ``spotgen pipeline`` commands (``commands``). ``spotgen.testing``
builds its contract checks on ``local``.
"""
