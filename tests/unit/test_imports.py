"""Importing the package, its server or its client builds nothing, patches nothing and leaves
logging as it was (docs/decisions.md, "Layers")."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = r"""
import gc, json, logging, sys
import hypercorn.trio.run as run, hypercorn.utils as utils
root_handlers = list(logging.getLogger().handlers)
import wirthforge_trio, wirthforge_trio.server, wirthforge_trio.client
from wirthforge_trio.engine.runtime import Engine
from wirthforge_trio.web import WirthforgeApp
package_log = logging.getLogger("wirthforge_trio")
print(json.dumps({
    "app_module": "wirthforge_trio.app" in sys.modules,
    "engines": sum(isinstance(o, Engine) for o in gc.get_objects()),
    "apps": sum(isinstance(o, WirthforgeApp) for o in gc.get_objects()),
    "worker_patched": run.check_multiprocess_shutdown_event
        is not utils.check_multiprocess_shutdown_event,
    "package_handlers": len(package_log.handlers),
    "propagates": package_log.propagate,
    "level": package_log.level,
    "root_unchanged": logging.getLogger().handlers == root_handlers,
}))
"""


def test_importing_the_package_server_and_client_builds_and_patches_nothing() -> None:
    run = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(run.stdout) == {
        "app_module": False,
        "engines": 0,
        "apps": 0,
        "worker_patched": False,
        "package_handlers": 0,
        "propagates": True,
        "level": 0,
        "root_unchanged": True,
    }
