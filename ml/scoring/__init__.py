"""Batch scoring (the batch layer's view): a raw dataset or a Hive table scored with a registered model version
through Spark, written as the Hive table `mlops.<dataset>_predictions`, partitioned by score date and model version.

model   which version to score with: the registry's alias or number resolved once, to its checkpoint and feature spec
score   the executor side: the model loaded once per Python worker, each Arrow batch scored as the service scores a
        request (ml.predictor.TabularPredictor, ml.serve.validation), a refused row kept with the service's message
job     the spark-submit application (`spark-submit ml/scoring/job.py`): read, score with mapInPandas, overwrite the
        run's partition
submit  run_scoring: spark-submit the job from Python (what `python -m ml score` runs)
cli     `python -m ml score`
"""
