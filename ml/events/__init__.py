"""Versioned JSON events on Kafka.

  envelope   the envelope, its JSON Schemas (ml/schemas/), validation and message keys
  publisher  EventPublisher (non-blocking, buffered) and publish_event (one synchronous send)
  consumer   reading a topic from its end or its beginning without a consumer group; `tail`
  cli        `python -m ml events tail|schemas`

Every message is one envelope (see the JSON Schemas in ml/schemas/, one per topic of ml/topics.py):
  {"schema": "training_metrics.v1", "event_id": uuid4, "event_time": ISO-8601 UTC, "dag_run_id": str | null,
   "producer": "host:pid/program", "payload": {...}}
Keys make re-deliveries recognisable: training metrics f"{run_name}:{trial_id}:{epoch}", pipeline events
f"{dag_id}:{dag_run_id}:{task_id}:{event}", promotions the registered model name.
"""
