"""Operations: the observer hooks (``observe``) and what implements them: metrics, tracing, logs, the health
probes, and ``telemetry``, which wires them together for one worker process.

It knows the worker only through the hooks: it imports the contract, ``runtime.config`` and itself, never
``runtime.worker``, ``runtime.models`` or ``runtime.local``.
"""
