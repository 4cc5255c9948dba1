"""The embedded local stack behind ``spotgen dev``: the AWS emulator and its resources (``devstack``,
``provision``), the API Gateway shim that serves the Lambda handlers (``gateway``), the demo (``demo``) and an
OTLP receiver for its traces (``spanreceiver``).

Development only: it may import any room and the Lambdas, and nothing outside it imports it except the CLI.
"""
