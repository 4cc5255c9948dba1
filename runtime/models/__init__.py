"""Models: the catalog (``catalog``), the in-process store of loaded models (tier 2, ``store``), the node-local
disk cache (tier 1, ``nodecache`` on the copy engine in ``copying``), manifests and verification (``manifests``)
and the tiny random-weight models for tests and the demo (``tiny``).

It imports the contract (model ids), ``runtime.config`` and the observer hooks (``runtime.ops.observe``) only;
what a model is loaded *into* (a diffusers pipeline) is the plugins' business, not this room's.
"""
