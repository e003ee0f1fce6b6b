"""Hot reload of the champion: the model being served, and a watcher that swaps in a newly promoted version.

A background thread follows `mlops.model.promoted.v1` from its end (ml.events.consumer.open_topic: no consumer group,
so every serving process sees every event). On an event for this model it resolves the `champion` alias (so events
that arrive out of order cannot load a stale version), loads that version in the background, and swaps it in with
one reference assignment: requests keep using the old model until the new one is completely loaded. The same thread
also re-checks the alias every `alias_poll_s` seconds, so a promotion made while Kafka was down is picked up.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from ml.clients import close_quietly
from ml.clock import SYSTEM_CLOCK, Backoff, Clock
from ml.events.consumer import open_topic
from ml.events.envelope import EventValidationError, validate_envelope
from ml.predictor import LoadedModel
from ml.registry.conventions import CHAMPION
from ml.settings import KafkaSettings
from ml.topics import MODEL_PROMOTED

log = logging.getLogger(__name__)

Loader = Callable[[str, str], LoadedModel]  # (model name, version) -> the loaded version
Resolver = Callable[[str], str]  # model name -> the version the champion alias names


class ModelHolder:
    """The model being served. Readers take `current` once per request; a reload replaces it in one assignment."""

    def __init__(self, name: str, loaded: LoadedModel) -> None:
        self.name = name
        self.current = loaded
        self.reloads = 0
        self.last_reload_error: str | None = None
        self.load_observer: Callable[[float], None] | None = None  # told each reload's load time (Prometheus)
        self._reload_lock = threading.Lock()

    def reload_champion(self, loader: Loader, resolve: Resolver) -> bool:
        """Load the version the `champion` alias names, if it is not the one served; True if it was swapped in."""
        with self._reload_lock:  # one reload at a time; requests never wait on this lock
            try:
                target = resolve(self.name)
                if target == self.current.version:
                    return False
                log.info("%s: loading champion v%s (serving v%s meanwhile)", self.name, target, self.current.version)
                started = time.perf_counter()
                loaded = loader(self.name, target)
            except Exception as error:
                self.last_reload_error = f"{type(error).__name__}: {error}"
                log.exception("%s: reloading the champion failed; still serving v%s", self.name, self.current.version)
                return False
            load_s = time.perf_counter() - started
            previous = self.current.version
            self.current = loaded  # the atomic swap
            self.reloads += 1
            self.last_reload_error = None
            log.info("%s: now serving v%s (was v%s; loaded in %.1f s)", self.name, loaded.version, previous, load_s)
            if self.load_observer is not None:
                try:
                    self.load_observer(load_s)
                except Exception:  # a metric must not undo a reload that succeeded
                    log.exception("%s: recording the load time failed", self.name)
            return True


class PromotionWatcher:
    """Background thread: model-promoted events (and a periodic alias check) trigger `ModelHolder.reload_champion`."""

    connect_backoff_s = (1.0, 30.0)

    def __init__(
        self,
        holder: ModelHolder,
        kafka: KafkaSettings,
        loader: Loader,
        resolve: Resolver,
        *,
        alias_poll_s: float = 300.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.holder = holder
        self.kafka = kafka
        self.alias_poll_s = alias_poll_s
        self.loader = loader
        self.resolve = resolve
        self.clock = clock
        self.ready = threading.Event()  # set once the consumer sits at the end of the topic
        self.events_seen = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"promotion-watcher-{self.holder.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _connect(self) -> Any:
        return open_topic(
            self.kafka,
            MODEL_PROMOTED.name,
            client_id=f"mlops-serve-{os.getpid()}",
            bootstrap_timeout_ms=5000,
            request_timeout_ms=15000,
        )

    def _run(self) -> None:
        consumer: Any = None
        backoff = Backoff(*self.connect_backoff_s)
        next_alias_check = self.clock.monotonic() + self.alias_poll_s
        while not self._stop.is_set():
            if self.clock.monotonic() >= next_alias_check:
                self.holder.reload_champion(self.loader, self.resolve)
                next_alias_check = self.clock.monotonic() + self.alias_poll_s
            if consumer is None:
                try:
                    consumer = self._connect()
                except Exception as error:
                    self._note_error(f"cannot follow {MODEL_PROMOTED.name} at {self.kafka.bootstrap_servers}: {error}")
                    self._stop.wait(backoff.next_delay())
                    continue
                backoff.reset()
                self.last_error = None
                self.ready.set()
                log.info("%s: following %s for promotions", self.holder.name, MODEL_PROMOTED.name)
            try:
                records = consumer.poll(timeout_ms=1000)
            except Exception as error:
                self._note_error(f"polling {MODEL_PROMOTED.name} failed: {error}")
                close_quietly(consumer)
                consumer = None
                self.ready.clear()
                continue
            if any(self._is_for_us(record.value) for batch in records.values() for record in batch):
                self.holder.reload_champion(self.loader, self.resolve)
        if consumer is not None:
            close_quietly(consumer)

    def _is_for_us(self, value: bytes | None) -> bool:
        self.events_seen += 1
        if value is None:  # a tombstone: anything that can write to the topic can send one
            log.warning("ignoring a message without a value on %s", MODEL_PROMOTED.name)
            return False
        try:
            envelope = json.loads(value)
            validate_envelope(envelope, MODEL_PROMOTED)
        except (ValueError, EventValidationError) as error:
            log.warning("ignoring an invalid event on %s: %s", MODEL_PROMOTED.name, error)
            return False
        payload = envelope["payload"]
        if payload["model_name"] != self.holder.name or payload["alias"] != CHAMPION:
            return False
        log.info("%s: promotion event: v%s is champion (%s)", self.holder.name, payload["version"], payload["reason"])
        return True

    def _note_error(self, text: str) -> None:
        if text != self.last_error:
            log.warning("%s (serving continues; retrying)", text)
        self.last_error = text
