"""JenkinsResource: triggers the `app-image` Jenkins job and follows it (python-jenkins).

`build(parameters=...)` posts the parameterised build (python-jenkins fetches the CSRF crumb
first), follows the queue item until an executor takes it, then polls the build, sending each new
line of its console text to the log as it appears, until the build has a result. The job itself
is `jenkins/Jenkinsfile` in this repository (it runs `jenkins/build-app-image.sh`).

No Jenkins server can be installed on the development machines: the tests run this resource
against a fake Jenkins REST API (tests/fakes/jenkins.py) that python-jenkins talks to over HTTP.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import dagster as dg
import requests
from pydantic import Field

import jenkins
from resources.cli_runner import ToolError

LogSink = Callable[[str], object]


class JenkinsError(ToolError):
    """Jenkins could not be asked, or the build could not be waited for (`command`: what was
    asked of Jenkins, when a call failed)."""


@dataclass(frozen=True)
class JenkinsBuild:
    job: str
    queue_id: int
    number: int
    url: str
    result: str  # SUCCESS, FAILURE, ABORTED, UNSTABLE, NOT_BUILT
    description: str | None
    duration_s: float
    console: str = field(repr=False)

    @property
    def ok(self) -> bool:
        return self.result == "SUCCESS"

    @property
    def console_url(self) -> str:
        return self.url.rstrip("/") + "/console"

    def tail(self, lines: int = 40) -> list[str]:
        return self.console.splitlines()[-lines:]


class JenkinsResource(dg.ConfigurableResource):
    """A Jenkins server, by URL, with a user and an API token (set with dg.EnvVar)."""

    url: str = Field(
        default="", description="The Jenkins server, e.g. https://jenkins.example.coop"
    )
    username: str = Field(default="", description="The user the API token belongs to.")
    api_token: str = Field(default="", description="The user's API token (dg.EnvVar).")
    job: str = Field(default="app-image", description="The job that runs jenkins/Jenkinsfile.")
    poll_interval_s: float = Field(default=2.0, description="How often the build is polled.")
    queue_timeout_s: float = Field(default=900.0, description="How long a build may wait queued.")
    build_timeout_s: float = Field(default=3600.0, description="How long a build may run.")
    request_timeout_s: float = Field(default=30.0, description="Per HTTP request.")

    @classmethod
    def from_env(cls) -> JenkinsResource:
        """The resource with each field that has an environment variable set taken from it
        (`INFRA_JENKINS_URL`, `INFRA_JENKINS_USER`, `INFRA_JENKINS_API_TOKEN`,
        `INFRA_JENKINS_JOB`), as dg.EnvVar so the token is never shown."""
        names = {
            "url": "INFRA_JENKINS_URL",
            "username": "INFRA_JENKINS_USER",
            "api_token": "INFRA_JENKINS_API_TOKEN",
            "job": "INFRA_JENKINS_JOB",
        }
        return cls(**{k: dg.EnvVar(v) for k, v in names.items() if os.environ.get(v)})

    def client(self):
        if not self.url:
            raise JenkinsError(
                "the jenkins resource has no url: set INFRA_JENKINS_URL (and INFRA_JENKINS_USER,"
                " INFRA_JENKINS_API_TOKEN), or configure the `jenkins` resource"
            )
        if self.username:
            return jenkins.Jenkins(
                self.url, self.username, self.api_token, timeout=self.request_timeout_s
            )
        return jenkins.Jenkins(self.url, timeout=self.request_timeout_s)

    def build(self, *, parameters: Mapping[str, str], log: LogSink | None = None) -> JenkinsBuild:
        """Run `job` with `parameters` and wait for its result; each console line goes to `log`.

        Raises JenkinsError when Jenkins cannot be asked, the job does not exist, the queue item
        is cancelled, or a timeout passes. A build that ends without SUCCESS is returned (its
        `result` and console say why), not raised.
        """
        sink = log or dg.get_dagster_logger("jenkins").info
        server = self.client()
        queue_id = self._call(
            f"trigger job {self.job!r}", server.build_job, self.job, dict(parameters)
        )
        number, url = self._wait_for_executor(server, queue_id)
        sink(f"[jenkins] {self.job} #{number} started: {url}")
        started = time.monotonic()
        shown = 0  # characters of the console already sent to the log
        try:
            while True:
                info = self._call("read the build", server.get_build_info, self.job, number)
                done = not info.get("building") and info.get("result") is not None
                console = self._call(
                    "read the console", server.get_build_console_output, self.job, number
                )
                # While the build runs, a last line may still be growing: show whole lines only.
                end = len(console) if done else console.rfind("\n") + 1
                if end > shown:
                    for line in console[shown:end].splitlines():
                        sink(line)
                    shown = end
                if done:
                    return JenkinsBuild(
                        job=self.job,
                        queue_id=queue_id,
                        number=number,
                        url=info.get("url") or url,
                        result=str(info["result"]),
                        description=info.get("description"),
                        duration_s=float(info.get("duration") or 0) / 1000.0,
                        console=console,
                    )
                if time.monotonic() - started > self.build_timeout_s:
                    self._stop(server, number, sink)
                    raise JenkinsError(
                        f"{self.job} #{number} still running after {self.build_timeout_s:g} s;"
                        f" stopped it: {url}"
                    )
                time.sleep(self.poll_interval_s)
        except BaseException as exc:
            # A cancelled Dagster run interrupts the wait (not an Exception): stop the build.
            if not isinstance(exc, Exception):
                self._stop(server, number, sink)
            raise

    def _wait_for_executor(self, server, queue_id: int) -> tuple[int, str]:
        deadline = time.monotonic() + self.queue_timeout_s
        why = ""
        while True:
            item = self._call("read the queue item", server.get_queue_item, queue_id)
            if item.get("cancelled"):
                raise JenkinsError(f"queue item {queue_id} of {self.job} was cancelled in Jenkins")
            executable = item.get("executable")
            if executable and executable.get("number") is not None:
                return int(executable["number"]), str(executable.get("url", ""))
            why = item.get("why") or why
            if time.monotonic() > deadline:
                try:
                    server.cancel_queue(queue_id)
                except Exception:  # noqa: BLE001 - the timeout below is the error to report
                    pass
                raise JenkinsError(
                    f"{self.job} waited {self.queue_timeout_s:g} s in the queue without an"
                    f" executor (Jenkins: {why or 'no reason given'}); cancelled it"
                )
            time.sleep(self.poll_interval_s)

    def _stop(self, server, number: int, sink: LogSink) -> None:
        try:
            server.stop_build(self.job, number)
            sink(f"[jenkins] asked {self.job} #{number} to stop")
        except Exception as exc:  # noqa: BLE001 - best effort while already failing
            sink(f"[jenkins] could not stop {self.job} #{number}: {exc}")

    def _call(self, what: str, fn, *args):

        try:
            return fn(*args)
        except jenkins.NotFoundException:
            raise JenkinsError(
                f"cannot {what}: not found in Jenkins at {self.url}", command=what
            ) from None
        except (jenkins.JenkinsException, requests.RequestException) as exc:
            text = str(exc)
            if self.api_token:
                text = text.replace(self.api_token, "***")
            raise JenkinsError(
                f"cannot {what} (Jenkins at {self.url}): {text}", command=what
            ) from None
