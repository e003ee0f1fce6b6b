"""A minimal spark-submit application for the smoke test: read a CSV over s3a, write it back as Parquet."""

import sys

from pyspark.sql import SparkSession

if __name__ == "__main__":
    source, target = sys.argv[1], sys.argv[2]
    spark = SparkSession.builder.appName("smoke-csv-to-parquet").getOrCreate()
    frame = spark.read.option("header", True).option("inferSchema", True).csv(source)
    frame.write.mode("overwrite").parquet(target)
    print(f"rows={frame.count()}")
    spark.stop()
