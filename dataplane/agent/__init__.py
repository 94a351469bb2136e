"""The node agent behind ``dataplane sync``: watch streams in, batched Proxier syncs out.

* :mod:`.events` — the watch-event stream format (kubectl's ``--output-watch-events -o json``)
  and an incremental decoder;
* :mod:`.sources` — reading files, FIFOs, ``-`` and snapshots concurrently;
* :mod:`.kubectl` — list-and-watch with the user's ``kubectl``;
* :mod:`.store` — the objects by kind/namespace/name, feeding the Proxiers;
* :mod:`.loop` — kube-proxy's bounded-frequency sync loop with retries;
* :mod:`.cli` — the ``dataplane sync`` command;
* :mod:`.health` — ``/healthz`` and ``/metrics``.
"""
