"""Thin producers behind API Gateway (HTTP API, payload 2.0): submit, status and the router.

They import boto3, pydantic, the standard library and the job contract only: no torch, diffusers or celery.
"""
