"""Ingest: snapshot raw CSV/Parquet objects from S3 into the lake, keyed by a content hash, after validating them.

config    IngestConfig (what to ingest) and IngestResult
read      listing the source objects, their content hash, parsing one object with pyarrow
validate  column kinds, task inference, the checks every object must pass, schema drift
snapshot  ingest(): validate, then copy server-side and write the manifest last
cli       `python -m ml ingest`
"""
