"""The built-in pipelines (txt2img, img2img, ControlNet), one module per task as in diffusers.

Each is a ``runtime.plugins.Pipeline``; ``pipelines.common`` holds what they share, chiefly the rule that
every task runs on the one set of model components the ``ModelStore`` loaded for the base model.
"""
