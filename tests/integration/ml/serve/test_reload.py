"""Hot reload against the real registry and Kafka: a promotion event makes the service load the new champion, a
rollback is followed too, and a promotion under concurrent load (gunicorn) fails no request."""

from __future__ import annotations

import threading
import time
import urllib.error
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ml.registry.context import RegistryContext
from ml.registry.promote import rollback
from tests.integration.ml.serve.support import gunicorn_service, offline
from tests.support.probes import http, wait_until
from tests.support.stand_in_model import raw_rows


def test_a_promotion_and_a_rollback_are_followed(
    registered: Callable[[str, str], dict[str, Any]],
    served: Callable[[str], str],
    context: RegistryContext,
    tmp_path: Path,
) -> None:
    first = registered("medium", "reload-1")
    url = served(first["model_name"])
    rows = raw_rows(30, seed=11)
    assert http("POST", f"{url}/predict", {"rows": rows})[1]["version"] == "1"

    # A better model is registered and promoted: the service loads it in the background and switches over.
    second = registered("good", "reload-2")
    assert (second["decision"], second["champion"]) == ("promoted", "2")
    wait_until(lambda: http("GET", f"{url}/model")[1]["version"] == "2", "the service serves the new champion")
    _, body = http("POST", f"{url}/predict", {"rows": rows})
    labels, probabilities = offline("good", rows, tmp_path)
    assert body["version"] == "2" and body["predictions"] == labels
    assert np.allclose(body["probabilities"], probabilities, atol=1e-7)
    assert http("GET", f"{url}/model")[1]["reloads"] == 1

    # A rollback is a promotion event too.
    rollback(context, first["model_name"], "1", reason="test rollback")
    wait_until(lambda: http("GET", f"{url}/model")[1]["version"] == "1", "the service follows the rollback")
    assert http("GET", f"{url}/health")[1]["watcher"] == {"alive": True, "following": True, "last_error": None}


def test_a_promotion_under_concurrent_load_fails_no_request(
    registered: Callable[[str, str], dict[str, Any]], tmp_path: Path, stack_env: dict[str, str]
) -> None:
    """8 clients post to gunicorn (4 threads) while a better model is promoted: every answer is a 200 from version 1
    or 2, with that version's predictions, and no client sees version 1 again after it saw 2. Bounded: at most 6,000
    requests or 120 s, to 127.0.0.1 only; each client paces itself (at most ~20 requests/s) so that the reload is
    not starved on a small machine."""
    first = registered("medium", "load-1")
    rows = raw_rows(5, seed=4)
    expected = {"1": offline("medium", rows, tmp_path)[0], "2": offline("good", rows, tmp_path)[0]}
    clients, cap, deadline = 8, 6000, time.monotonic() + 120
    answers: list[list[tuple[int, str | None, list[str] | None]]] = [[] for _ in range(clients)]
    sent = iter(range(cap))  # shared budget of requests (next() on a range iterator is atomic under the GIL)
    promoted, saw_new, stop = threading.Event(), threading.Event(), threading.Event()

    def client(index: int) -> None:
        # Until every client has seen version 2 after the promotion (or the budget or deadline is spent).
        while next(sent, None) is not None and time.monotonic() < deadline:
            try:
                status, body = http("POST", f"{url}/predict", {"rows": rows})
            except (urllib.error.URLError, ConnectionError) as error:
                answers[index].append((0, repr(error), None))
                continue
            answers[index].append((status, body.get("version"), body.get("predictions")))
            if promoted.is_set() and body.get("version") == "2":
                saw_new.set()
                if len(answers[index]) >= 10 and answers[index][-2][1] == "2":
                    return
            stop.wait(0.05)  # pacing of the load, not a wait for something to happen

    with gunicorn_service(first["model_name"], tmp_path, stack_env, threads=4) as url:
        threads = [threading.Thread(target=client, args=(i,), name=f"load-{i}") for i in range(clients)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        # Load first (every client has had answers), then the promotion.
        wait_until(lambda: all(len(per_client) >= 3 for per_client in answers), "every client is under way")
        second = registered("good", "load-2")
        assert (second["decision"], second["champion"]) == ("promoted", "2")
        promoted.set()
        for thread in threads:
            thread.join(120)
        elapsed = time.monotonic() - started

    flat = [answer for per_client in answers for answer in per_client]
    print(
        f"\n{len(flat)} requests from {clients} clients in {elapsed:.1f}s; "
        f"versions {Counter(version for _, version, _ in flat)}"
    )
    failures = [answer for answer in flat if answer[0] != 200]
    assert not failures, f"{len(failures)} of {len(flat)} requests failed, e.g. {failures[:3]}"
    assert saw_new.is_set(), "no client saw the promoted version within the budget"
    assert {version for _, version, _ in flat} == {"1", "2"}
    for _, version, predictions in flat:
        assert predictions == expected[str(version)], f"version {version} answered another model's predictions"
    for per_client in answers:
        versions = [version for _, version, _ in per_client]
        if "2" in versions:
            assert "1" not in versions[versions.index("2") :], f"a client went back to version 1: {versions}"
