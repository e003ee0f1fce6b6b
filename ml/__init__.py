"""The pipeline's work as a plain Python package: ingest, Spark preprocessing, models, tuning, registry, events,
serving. It never imports Airflow; `python -m ml --help` runs every stage without it."""
