"""List-then-watch caches of API objects as plain dicts (client-go's informer, in small)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import watch

Manifest = dict[str, Any]
log = logging.getLogger(__name__)


class Informer:
    """Keeps `objects` ((namespace, name) -> dict) current; calls `on_change` after each change."""

    def __init__(
        self, list_call: Callable[..., Any], on_change: Callable[[], None], **selectors: str
    ) -> None:
        self.list_call = list_call
        self.selectors = selectors
        self.on_change = on_change
        self.objects: dict[tuple[str, str], Manifest] = {}
        self.synced = threading.Event()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._watch is not None:
            self._watch.stop()

    def snapshot(self) -> list[Manifest]:
        with self._lock:
            return list(self.objects.values())

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                version = self._list()
                self._watch = watch.Watch()
                for event in self._watch.stream(
                    self.list_call, resource_version=version, timeout_seconds=60, **self.selectors
                ):
                    if event["type"] == "ERROR":
                        break  # 410 Gone and the like: list again
                    obj = event["raw_object"]
                    key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
                    with self._lock:
                        if event["type"] == "DELETED":
                            self.objects.pop(key, None)
                        else:
                            self.objects[key] = obj
                    self.on_change()
            except Exception as error:  # the API server restarting or going away: retry
                if not self._stopped.is_set():
                    log.warning("watch failed (%s); listing again", error)
                    time.sleep(1.0)

    def _list(self) -> str:
        response = self.list_call(_preload_content=False, **self.selectors)
        document = json.loads(response.data)
        with self._lock:
            self.objects = {
                (item["metadata"].get("namespace", ""), item["metadata"]["name"]): item
                for item in document.get("items") or []
            }
        self.synced.set()
        self.on_change()
        return str(document["metadata"]["resourceVersion"])
