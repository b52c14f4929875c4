"""The process in which SaltResource uses salt's Python API: `python -m resources.salt_worker CFG`.

Why a process of its own: importing salt changes the interpreter for everyone in it. It installs
its own logger class for every logger created afterwards (`logging.setLoggerClass`), lowers the
root logger's level to salt's GARBAGE and replaces `sys.excepthook`. In the Dagster process that
breaks Dagster's own loggers (`TypeError: SaltLoggingClass.__new__() got an unexpected keyword
argument 'level'`, measured with dagster 1.13 and salt 3008.4). So salt lives here, and the
resource talks to it with one JSON object per line:

    request   {"id": 1, "op": "wheel", "fun": "key.accept", "kwargs": {"match": [...]}}
              {"id": 2, "op": "run", "tgt": [...], "fun": "state.apply", "arg": [...],
               "kwarg": {...}, "timeout": 600}
              {"id": 3, "op": "opts"}
    answers   {"id": 2, "event": "pub", "jid": "..."}          (run: the job is published)
              {"id": 2, "event": "ret", "minion": "...", "ret": {...}}   (run: one per minion)
              {"id": 1, "event": "done", "value": ...}
              {"id": 1, "event": "error", "message": "..."}

It exits when its stdin closes.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

OPTS_KEYS = (
    "conf_file",
    "root_dir",
    "sock_dir",
    "pki_dir",
    "interface",
    "publish_port",
    "ret_port",
    "auto_accept",
    "open_mode",
    "file_roots",
    "pillar_roots",
    "default_include",
    "worker_threads",
)


def main(config: str) -> int:
    out = sys.stdout
    sys.stdout = sys.stderr  # whatever salt prints must not corrupt the answers

    def send(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj, default=str) + "\n")
        out.flush()

    import salt.client
    import salt.wheel

    local = salt.client.LocalClient(c_path=config)
    wheel = salt.wheel.WheelClient(local.opts)
    send({"id": 0, "event": "ready"})
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        rid = request.get("id")
        try:
            _answer(request, rid, local, wheel, send)
        except Exception as exc:  # noqa: BLE001 - reported to the resource, which raises
            send(
                {
                    "id": rid,
                    "event": "error",
                    "message": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(),
                }
            )
    return 0


def _answer(
    request: dict[str, Any],
    rid: Any,
    local: Any,
    wheel: Any,
    send: Callable[[dict[str, Any]], None],
) -> None:
    """One request's answers: `opts`, a `wheel` function, or a `run` of a job on minions."""
    op = request["op"]
    if op == "opts":
        send({"id": rid, "event": "done", "value": {k: local.opts.get(k) for k in OPTS_KEYS}})
    elif op == "wheel":
        value = wheel.cmd(
            request["fun"],
            request.get("args", []),
            kwarg=request.get("kwargs") or None,
            print_event=False,
        )
        send({"id": rid, "event": "done", "value": value})
    elif op == "run":
        _run_job(request, rid, local, send)
    else:
        send({"id": rid, "event": "error", "message": f"unknown op {op!r}"})


def _run_job(
    request: dict[str, Any], rid: Any, local: Any, send: Callable[[dict[str, Any]], None]
) -> None:
    """The job published (`pub`), each minion's return as it comes (`ret`), then `done`."""
    for item in local.cmd_iter(
        request["tgt"],
        request["fun"],
        arg=request.get("arg", []),
        kwarg=request.get("kwarg") or {},
        tgt_type="list",
        timeout=request.get("timeout", 30),
        full_return=True,
        expect_minions=True,
        yield_pub_data=True,
        **(
            {"gather_job_timeout": request["gather_job_timeout"]}
            if request.get("gather_job_timeout")
            else {}
        ),
    ):
        if not item:
            continue
        if "jid" in item and "minions" in item:
            send({"id": rid, "event": "pub", "jid": item["jid"]})
            continue
        for minion, ret in item.items():
            send({"id": rid, "event": "ret", "minion": minion, "ret": ret})
    send({"id": rid, "event": "done", "value": None})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
