"""What a registry notification does: wake registry_image_sensor, instead of waiting for its
poll.

The registry (Docker Distribution, its push door) posts an envelope of events for each push. The
events are not trusted: a push of an app's repository at its branch tag only says "look now".
The endpoint then asks Dagster to evaluate registry_image_sensor from the sensor's own cursor
(GraphQL `sensorDryRun`: the sensor's code, in the code location, with every check it makes:
app_image's record, a `deliver_<app>` run of that commit, the revision label) and launches what it
asks for with the sensor's name and run key (the digest), as the daemon would: the sensor's own
next poll (every 30 s, now the fallback) skips those run keys, so a digest is never released
twice. A sensor that is off is not woken.

The registry tells of a push as soon as it ends; app_image records the image a moment later (when
its step ends), and until then the sensor rightly calls the image not ours. So when the
evaluation names such an image, it is asked again RETRY_AFTER_S later, then left to the poll.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from infra_assets.topology.model import TopologyError, load_topology
from resources.dagster_api import DagsterApi
from sensors import registry_images
from webhooks.push import RUN_KEY_TAG, SENSOR_NAME_TAG, STARTED_BY_TAG

RETRY_AFTER_S = (3.0, 10.0)
NOT_RECORDED_YET = "never built it"  # registry_image_sensor's words for an image not ours (yet)


def pushed_apps(envelope: Any, topology_file: Path) -> list[str]:
    """The apps whose branch tag an envelope's push events name (a blob, or a manifest pushed
    by digest or under another tag, names none: the branch tag moves by a push of its own)."""
    events = envelope.get("events") if isinstance(envelope, dict) else None
    targets = [
        e["target"]
        for e in (events if isinstance(events, list) else [])
        if isinstance(e, dict) and e.get("action") == "push" and isinstance(e.get("target"), dict)
    ]
    tagged = [(str(t.get("repository")), t["tag"]) for t in targets if t.get("tag") is not None]
    if not tagged:  # a push's blobs, each told of apart: no topology to read for them
        return []
    try:
        apps = load_topology(topology_file).apps
    except TopologyError:
        return []
    return sorted({repo for repo, tag in tagged if repo in apps and tag == apps[repo].branch})


class RegistryWake:
    def __init__(self, api: DagsterApi):
        self.api = api
        self._lock = threading.Lock()

    def wake(self, retries: tuple[float, ...] = RETRY_AFTER_S) -> list[str]:
        """Evaluate the sensor now and launch what it asks for: the run ids launched."""
        name = registry_images.SENSOR_NAME
        with self._lock:
            status, cursor = self.api.sensor(name)
            if status != "RUNNING":
                _say(f"registry: {name} is {status.lower()}: not woken")
                return []
            evaluation = self.api.evaluate(name, cursor)
            launched = []
            for request in evaluation.requests:
                key = request["runKey"]
                if self.api.runs({RUN_KEY_TAG: key, SENSOR_NAME_TAG: name}):
                    continue
                tags = {t["key"]: t["value"] for t in request.get("tags") or []}
                tags |= {
                    SENSOR_NAME_TAG: name,
                    RUN_KEY_TAG: key,
                    STARTED_BY_TAG: "registry-notification",
                }
                config = yaml.safe_load(request.get("runConfigYaml") or "") or {}
                launched.append(self.api.launch(request["jobName"], tags=tags, run_config=config))
        _say(f"registry: {name} woken: {len(launched)} run(s) launched; {evaluation.skip_reason}")
        if not launched and NOT_RECORDED_YET in evaluation.skip_reason and retries:
            timer = threading.Timer(retries[0], self._again, args=(retries[1:],))
            timer.daemon = True
            timer.start()
        return launched

    def _again(self, retries: tuple[float, ...]) -> None:
        try:
            self.wake(retries)
        except Exception as err:  # a timer thread: say it, the sensor's poll remains
            _say(f"registry: waking {registry_images.SENSOR_NAME} again failed: {err}")


def _say(line: str) -> None:
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} {line}\n")
