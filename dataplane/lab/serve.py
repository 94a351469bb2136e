"""The background process of a lab that is up: ``python -m dataplane.lab.serve STATE_FILE``
(started by ``dataplane lab up``) runs the lab's reply servers until told to stop."""
from __future__ import annotations

import os
import signal
import sys

from ..errors import LabError
from .server import Server
from .state import read_state

def _serve(path: str) -> int:
    """Body of ``python -m dataplane.lab.serve STATE``: run the lab's servers until told
    to stop (SIGTERM/SIGINT/SIGHUP) or until the state file stops naming this process."""
    signals = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)  # the servers' threads inherit the mask
    servers: list[Server] = []
    try:
        state = read_state(path)
        if state is None:
            raise LabError(f"{path} does not exist")
        ipv6 = os.path.exists("/proc/sys/net/ipv6")
        for spec in state.get("servers", []):
            servers.append(Server(spec["ns"], spec["member"], tcp_ports=spec["tcp"], udp_ports=spec["udp"],
                                  ipv6=ipv6))
    except Exception as e:  # reported to `lab up`, which removes the lab
        for srv in servers:
            srv.close()
        print(f"{type(e).__name__}: {e}", flush=True)
        return 1
    print("ready", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    try:
        while signal.sigtimedwait(signals, 1.0) is None:
            try:
                current = read_state(path)
            except LabError:
                current = None
            if current is None or current.get("server_pid") not in (None, os.getpid()):
                break
    finally:
        for srv in servers:
            srv.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 2:
        sys.exit(_serve(sys.argv[1]))
    print("usage: python -m dataplane.lab.serve STATE_FILE (started by `dataplane lab up`)", file=sys.stderr)
    sys.exit(2)
