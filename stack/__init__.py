"""Local stack: the project's real services (S3 server, Kafka, MLflow, Airflow home) run as plain processes.

`python -m stack up|down|status|tools|env|run` is the entry point; the Makefile's stack-* targets call it.
"""
