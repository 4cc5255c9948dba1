"""Graceful interruption: SIGTERM or a spot notice stops intake, checkpoints the job, and exits in time.

On EKS a spot interruption reaches the pod as SIGTERM (Karpenter drains the node), as does KEDA/HPA
scale-in and a rolling update; EC2 takes the node 120 s after its notice whatever happens. So the first
SIGTERM starts an interruption: Celery's warm shutdown stops taking messages, the running job sees
``requested`` at its next step boundary, saves a checkpoint and hands its message back, and the process
exits once the job before it has stored its outputs (``runtime.worker.handoff``). A watchdog bounds all of it
by ``deadline_s``; a second SIGTERM ends it at once. A forced exit releases the messages of both jobs first, so
neither is lost: the running one continues from an older checkpoint, the storing one is stored again.

The EC2 metadata notice (``spot/instance-action``) is an optional extra: pods usually cannot reach IMDS
(hop limit 1), so when enabled a poller simply sends this process the SIGTERM Kubernetes would.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from typing import Any

log = logging.getLogger("spotgen.interrupt")

#: Exit status of a forced exit (EX_SOFTWARE): the job was released, not finished.
FORCED_EXIT = 70


class Interruption:
    """Process-wide: one per worker process, created at start-up."""

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self.reason = ""
        #: The leases this process holds (the generating job's, and the one whose outputs are being stored),
        #: released on a forced exit.
        self.leases: list[Any] = []
        self._event = threading.Event()
        self._force = threading.Event()
        self._lock = threading.Lock()
        self._count = 0

    def hold(self, lease: Any) -> None:
        with self._lock:
            self.leases.append(lease)

    def drop(self, lease: Any) -> None:
        with self._lock:
            if lease in self.leases:
                self.leases.remove(lease)

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, reason: str) -> None:
        """Start an interruption; a second request forces the exit now. Safe to call from a signal handler."""
        with self._lock:
            self._count += 1
            first = self._count == 1
        if first:
            self.reason = reason
            self._event.set()
            log.warning("interruption (%s): no new jobs; the running job checkpoints at its next step; forced exit "
                        "in %.0f s", reason, self.deadline_s)
            threading.Thread(target=self._watchdog, name="interrupt-watchdog", daemon=True).start()
        else:
            log.warning("second interruption (%s): exiting now", reason)
            self._force.set()

    def _watchdog(self) -> None:
        forced = self._force.wait(self.deadline_s)
        self.force_exit("a second signal" if forced else f"the {self.deadline_s:.0f} s deadline")

    def force_exit(self, why: str) -> None:
        with self._lock:
            leases = list(self.leases)
        for lease in leases:
            lease.release()
        log.error("forced exit after %s%s", why, f"; the messages of {len(leases)} job(s) in hand were released"
                  if leases else "")
        logging.shutdown()
        os._exit(FORCED_EXIT)


def spot_notice(base_url: str, timeout_s: float = 2.0) -> dict[str, Any] | None:
    """The pending spot interruption from IMDSv2 (token first), or None when there is none."""
    token_req = urllib.request.Request(f"{base_url}/latest/api/token", method="PUT",
                                       headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
    with urllib.request.urlopen(token_req, timeout=timeout_s) as resp:  # noqa: S310 - configured IMDS URL
        token = resp.read().decode()
    req = urllib.request.Request(f"{base_url}/latest/meta-data/spot/instance-action",
                                 headers={"X-aws-ec2-metadata-token": token})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310
            notice = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:  # no interruption scheduled
            return None
        raise
    return notice if isinstance(notice, dict) and notice.get("action") in ("terminate", "stop", "hibernate") \
        else None


def watch_imds(base_url: str, interval_s: float, stop: threading.Event | None = None) -> threading.Thread:
    """Poll for a spot notice; on one, send this process SIGTERM (the same path as a Kubernetes drain)."""

    def poll() -> None:
        failures = 0
        while not (stop and stop.is_set()):
            try:
                notice = spot_notice(base_url)
                failures = 0
            except (OSError, ValueError) as exc:
                failures += 1
                if failures in (1, 10):  # unreachable IMDS is normal in a pod; say it once, then rarely
                    log.info("spot notice poll failed (%s); IMDS may be unreachable from this pod", exc)
                notice = None
            if notice:
                log.warning("spot interruption notice: %s", notice)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(interval_s)

    thread = threading.Thread(target=poll, name="imds-spot-notice", daemon=True)
    thread.start()
    return thread
