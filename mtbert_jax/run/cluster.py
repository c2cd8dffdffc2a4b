"""A multi-process job that forms, and fails, within a bounded time.

jax.distributed leaves a job that cannot form, or that loses a process, to its own defaults: a
process whose peers never start waits minutes, then aborts with a native stack dump; a survivor
of a peer's `kill -9` blocks in a collective until gloo or the coordination service gives up
(minutes) and aborts. On a cluster a silent hang burns the allocation. Here:

- joining is watched: a process whose peers have not all joined within MTBERT_JOIN_TIMEOUT
  seconds (default 300) ends with one line naming itself, the coordinator and the count;
- once joined, every process writes a heartbeat to the coordination service's key-value store
  from a thread of its own and reads the others'; a peer silent for MTBERT_PEER_TIMEOUT seconds
  (default 120), or a coordinator that cannot be reached for as long, ends every survivor with
  one line naming the silent process;
- a collective that fails because a peer died ends in one line too (`describe_lost_peer`).

Every such end has status 69 (CLUSTER_EXIT_STATUS) and releases the workdir lock; the
same command on every process then resumes from the last checkpoint. jax's own timeouts are
set beyond these, so the project's line comes first.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Optional

import jax

from mtbert_jax.errors import ConfigError, first_line
from mtbert_jax.run import preemption

JOIN_TIMEOUT_ENV, PEER_TIMEOUT_ENV = "MTBERT_JOIN_TIMEOUT", "MTBERT_PEER_TIMEOUT"
DEFAULT_JOIN_TIMEOUT, DEFAULT_PEER_TIMEOUT = 300.0, 120.0
_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
CLUSTER_EXIT_STATUS = 69  # EX_UNAVAILABLE (sysexits.h): a peer, not the input, failed
_KEY = "mtbert/heartbeat/{}"
_RESTART = "run the same command on every process to resume from the last checkpoint"


class PeerLost(Exception):
    """The job could not form, or lost a process; the message names which."""


def _seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 1 <= value <= 86_400:  # NaN fails too
        raise ConfigError(f"{name}={text!r}: expected seconds between 1 and 86400")
    return value


def timeouts() -> tuple[float, float]:
    """(join, peer) timeouts in seconds, from the environment, checked."""
    return _seconds(JOIN_TIMEOUT_ENV, DEFAULT_JOIN_TIMEOUT), _seconds(PEER_TIMEOUT_ENV, DEFAULT_PEER_TIMEOUT)


def cluster_environment() -> Optional[dict]:
    """The job this process belongs to: {coordinator, processes, process} from JAX_* variables,
    {} for a multi-task SLURM job (jax reads it itself), None for a single process. Half of the
    JAX_* variables is a ConfigError naming the missing ones."""
    given = {k: os.environ.get(k) for k in _ENV if os.environ.get(k)}
    if len(given) == len(_ENV):
        try:
            processes, process = int(given["JAX_NUM_PROCESSES"]), int(given["JAX_PROCESS_ID"])
        except ValueError:
            raise ConfigError(f"JAX_NUM_PROCESSES={given['JAX_NUM_PROCESSES']!r}, JAX_PROCESS_ID="
                              f"{given['JAX_PROCESS_ID']!r}: expected whole numbers") from None
        if not 0 <= process < processes:
            raise ConfigError(f"JAX_PROCESS_ID={process}: expected 0 to JAX_NUM_PROCESSES - 1 = {processes - 1}")
        if ":" not in given["JAX_COORDINATOR_ADDRESS"]:
            raise ConfigError(f"JAX_COORDINATOR_ADDRESS={given['JAX_COORDINATOR_ADDRESS']!r}: expected HOST:PORT")
        return {"coordinator": given["JAX_COORDINATOR_ADDRESS"], "processes": processes, "process": process}
    if given:
        missing = [k for k in _ENV if k not in given]
        raise ConfigError(f"a multi-process run needs all of {', '.join(_ENV)}; {', '.join(given)} "
                          f"set but {', '.join(missing)} missing (unset them all for one process)")
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and os.environ.get("SLURM_JOB_ID"):
        return {}
    return None


class _Monitor:
    """The heartbeat thread and what it has seen of the others."""

    def __init__(self, me: int, processes: int, peer_timeout: float):
        self.me, self.processes, self.peer_timeout = me, processes, peer_timeout
        now = time.monotonic()
        self.last_seen = {p: now for p in range(processes) if p != me}
        self.values: dict[int, str] = {}
        self.coordinator_ok = now

    @property
    def interval(self) -> float:
        """Seconds between heartbeats: a dozen per timeout, within [0.5, 10]."""
        return min(10.0, max(0.5, self.peer_timeout / 12))

    def stopped_beating(self) -> list[int]:
        """The peers whose heartbeat does not move over the next few beats (about 2.5 intervals):
        after a failed collective, the dead among them. The survivors beat on meanwhile."""
        before = dict(self.values)
        time.sleep(2.5 * self.interval + 0.5)
        return [p for p in self.last_seen if self.values.get(p) == before.get(p)]

    def run(self, client) -> None:
        beat, interval = 0, self.interval
        while True:
            beat += 1
            now = time.monotonic()
            try:
                client.key_value_set(_KEY.format(self.me), str(beat), allow_overwrite=True)
                for p in self.last_seen:
                    try:
                        value = client.key_value_try_get(_KEY.format(p))
                    except Exception:  # not written yet: the peer's first beat is still coming
                        value = None
                    if value is not None and value != self.values.get(p):
                        self.values[p], self.last_seen[p] = value, now
                self.coordinator_ok = now
            except Exception as e:  # the coordination service is unreachable: process 0 is gone
                if now - self.coordinator_ok > self.peer_timeout:
                    preemption.hard_exit(
                        f"process {self.me}: the job's coordinator (process 0) has not answered for "
                        f"{self.peer_timeout:.0f} s ({first_line(e)}); stopping; {_RESTART}", CLUSTER_EXIT_STATUS)
            for p, seen in self.last_seen.items():
                if now - seen > self.peer_timeout:
                    preemption.hard_exit(
                        f"process {self.me}: process {p} has sent no heartbeat for {self.peer_timeout:.0f} s "
                        f"(it died or hangs); stopping; {_RESTART}", CLUSTER_EXIT_STATUS)
            time.sleep(interval)


_monitor: Optional[_Monitor] = None


def join() -> bool:
    """Joins the job the environment describes (jax.distributed.initialize), within the join
    timeout, and starts the heartbeats; False for a single process."""
    global _monitor
    env = cluster_environment()
    if env is None:
        return False
    join_timeout, peer_timeout = timeouts()
    me = env.get("process", "?")
    where = f" at {env['coordinator']}" if env else ""
    joined = threading.Event()

    def watch_joining():
        if not joined.wait(join_timeout):
            count = f"all {env['processes']} processes" if env else "every process of the SLURM job"
            preemption.hard_exit(
                f"process {me}: the job did not form within {join_timeout:.0f} s: {count} must start, with the "
                f"same JAX_COORDINATOR_ADDRESS{where} (set {JOIN_TIMEOUT_ENV} to wait longer)", CLUSTER_EXIT_STATUS)

    threading.Thread(target=watch_joining, name="mtbert-join-watchdog", daemon=True).start()
    # jax's own limits lie beyond ours: the project's one line comes before jax's abort.
    limits = {"initialization_timeout": int(join_timeout) + 60, "heartbeat_timeout_seconds": int(peer_timeout) + 60}
    try:
        if env:
            jax.distributed.initialize(coordinator_address=env["coordinator"], num_processes=env["processes"],
                                       process_id=env["process"], **limits)
        else:
            jax.distributed.initialize(**limits)
    except Exception as e:
        raise PeerLost(f"process {me}: could not join the job{where} ({first_line(e)})") from None
    finally:
        joined.set()
    if preemption.is_installed():  # a command line: take SIGTERM back from jax's preemption notifier
        preemption.install()
    from jax._src import distributed as jax_distributed  # the client jax.distributed made

    _monitor = _Monitor(jax.process_index(), jax.process_count(), peer_timeout)
    threading.Thread(target=_monitor.run, args=(jax_distributed.global_state.client,),
                     name="mtbert-heartbeat", daemon=True).start()
    return True


def describe_lost_peer(error: BaseException) -> Optional[str]:
    """One line for an error of a multi-process job whose peer died under it, naming the peers
    whose heartbeats stopped; None when no peer stopped (the error is something else).

    The error's own text is read only for jax's runtime errors: str() of an error raised from a
    collective whose peer is gone may block (a ValueError of process_allgather does). Nothing here
    starts a jax backend: a command that never joined a cluster has no monitor."""
    if _monitor is None or jax.process_count() == 1:
        return None
    silent = _monitor.stopped_beating()
    if not silent:
        return None
    runtime = type(error).__name__ in ("JaxRuntimeError", "XlaRuntimeError")
    what = first_line(error) if runtime else type(error).__name__
    return (f"process {jax.process_index()}: process {', '.join(map(str, silent))} stopped: a collective with "
            f"it failed ({what}); stopping; {_RESTART}")
