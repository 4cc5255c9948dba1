"""Storage: the boto3 clients (``aws``) and the job's documents and files in S3 (``jobstore``).

Shared by the Lambdas and the worker, so it imports only ``runtime.config`` and ``runtime.contract``, boto3 and
the standard library: never the worker, the model cache or the operations tooling.
"""
