"""The pinned versions of what the stack fetches from the registries (Python packages are pinned in
constraints.txt)."""

from __future__ import annotations

VERSITYGW_MODULE = "github.com/versity/versitygw/cmd/versitygw"
VERSITYGW_VERSION = "v1.8.0"
KAFKA_VERSION = "4.1.1"  # also in stack/maven/kafka-pom.xml and spark-lineage-pom.xml
HADOOP_AWS_VERSION = "3.5.0"  # must equal pyspark/jars/hadoop-client-api-*.jar; also in stack/maven/spark-s3a-pom.xml
