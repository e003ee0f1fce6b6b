"""Spark preprocessing: a snapshot in, Parquet feature splits, `training_distributions.json`, `feature_spec.json` and
a Hive table out.

steps   the transformation as DataFrame -> DataFrame functions (read, parse, clean, deduplicate, split, fit, encode)
distributions  the training distributions the drift monitor compares with (bins, frequencies, moments, missing)
job     the spark-submit application that chains them and writes the results (`spark-submit ml/preprocess/job.py`)
hive    the Hive table of a dataset's features
conf    Spark configuration: s3a, the metastore, sizes
submit  run_preprocess: spark-submit the job from Python (what `python -m ml preprocess` runs)
cli     `python -m ml preprocess`
"""
