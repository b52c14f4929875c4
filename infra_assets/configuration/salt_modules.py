"""The project's own salt execution modules (salt/_modules/: coop_health, coop_backup), called on
minions that may hold an older copy (a minion syncs `_modules/` at a highstate, not when the
file changes). Each call names the module's sha256; a minion whose copy differs, or that has
none, answers so, gets the modules synced and is asked again."""

import functools
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from resources.paths import REPO_ROOT
from resources.salt import SaltError, SaltResource

MODULES = REPO_ROOT / "salt" / "_modules"
STALE = "stale_module"  # the key of a minion's answer when its copy is not this one


@functools.cache
def module_sha256(module: str) -> str:
    return hashlib.sha256((MODULES / f"{module}.py").read_bytes()).hexdigest()


def _current(ret: Any) -> bool:
    """Whether a minion's answer comes from this copy of the module: an answer saying it does
    not, or salt's report that the function is not there (an older copy, or none), is not."""
    if isinstance(ret, dict):
        return STALE not in ret
    if isinstance(ret, str):
        return "is not available" not in ret and "unexpected keyword argument" not in ret
    return True


def call_synced(
    salt: SaltResource,
    minions: Sequence[str],
    fun: str,
    kwargs: dict[str, Any],
    log: Callable[[str], None],
    timeout_s: float = 60,
) -> dict[str, Any]:
    """`fun` on `minions` with their copy of its module this one: their answers, by id (a
    minion that does not answer is absent)."""
    kwargs = {**kwargs, "module_sha256": module_sha256(fun.split(".", 1)[0])}
    returns = salt.call(minions=list(minions), fun=fun, kwargs=kwargs, timeout_s=timeout_s)
    stale = [m for m in minions if m in returns and not _current(returns[m])]
    if stale:
        log(f"syncing salt's custom modules to {', '.join(stale)} (theirs are not this one)")
        salt.call(minions=stale, fun="saltutil.sync_modules", timeout_s=60)
        returns.update(salt.call(minions=stale, fun=fun, kwargs=kwargs, timeout_s=timeout_s))
        still = [m for m in stale if isinstance(returns.get(m), dict) and STALE in returns[m]]
        if still:
            raise SaltError(
                f"{', '.join(still)} still hold another {fun.split('.')[0]} after a sync: the"
                " salt master's state tree (salt/_modules/) is not this checkout's; update it"
            )
    return returns
