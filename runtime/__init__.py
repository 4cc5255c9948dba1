"""spotgen runtime: the pipeline-agnostic framework (contract, queue, storage, worker, local stack).

Importing this package imports nothing heavy: the Lambdas use ``runtime.contract`` without torch,
diffusers or celery.
"""

__version__ = "0.1.0"
