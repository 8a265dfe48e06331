"""Celery workers: the app, thin task wrappers and their retry/failure policy. Only this package imports Celery."""
