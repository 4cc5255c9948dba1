"""The worker: the Celery app and everything that runs a job.

``app`` (Celery on SQS, start-up), ``runner`` (one job from message to final status), ``outputs`` (images,
result document, notification), ``deadletter`` (Celery's consumer and request hooks), ``lease`` (the message's
visibility heartbeat), ``interrupt`` (SIGTERM and spot notices), ``checkpoint`` (step state on S3),
``jobstatus`` (compare-and-swap on the status document), ``progress``, ``latest`` and ``steplog``.

It may import every other room of the runtime except ``local``, and never ``pipelines/``: the built-in
pipelines reach it through the plugin registry (``runtime.plugins``), like any other plugin.
"""
