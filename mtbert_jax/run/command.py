"""How every command line (train.py, evaluate.py, soup.py, convert.py, compare.py) starts and
ends: one mechanism, so that a command added later is born with it.

`start()` is a command's first act (after the malloc re-exec): it marks the process as a command
line and catches signals from then on (mtbert_jax/run/preemption.py). `ending(main)` runs the
command's body and turns how it ended into one line and an exit status:

  0    done
  2    refused: bad input (one line names the file, field or key), nothing the user had changed
  69   a multi-process job that could not form or lost a process (one line names which)
  75   train.py stopped by SIGTERM/SIGUSR1: saved if it had trained, the same command resumes
  130  Ctrl-C (train.py in its loop saves first)
  128+N another command stopped by signal N, its partial outputs removed

No traceback for any of these: a traceback is a bug in the project.
"""

from __future__ import annotations

import sys
from typing import Callable

from mtbert_jax.errors import MtbertError, exit_on_error, mark_command_line, user_message
from mtbert_jax.run import preemption


def start() -> None:
    """Marks this process as a command line and catches SIGTERM, SIGUSR1 and SIGINT from now on."""
    mark_command_line()
    preemption.install()


def ending(body: Callable[[], int], resumable: bool = False) -> int:
    """Runs `body` (the command's work, returning its status) and ends a failure in one line.
    `resumable`: the command is train.py, whose SIGTERM/SIGUSR1 status tells a scheduler to
    run it again (75). Returns the status; a command line ends the process with it."""
    from mtbert_jax.run import cluster

    try:
        return body()
    except preemption.Preempted as e:  # the loop saved: the same command resumes
        print(e, flush=True)
        return preemption.exit_status(e.signal_name, resumable=True)
    except preemption.Interrupted as e:
        what = (" before its first step: nothing to save; the same command starts again" if resumable
                else ": nothing written")
        return _fail(f"stopped by {e.signal_name}{what}", preemption.exit_status(e.signal_name, resumable))
    except cluster.PeerLost as e:
        return _fail(str(e), cluster.CLUSTER_EXIT_STATUS)
    except (MtbertError, OSError) as e:
        return _fail(user_message(e), 2)
    except Exception as e:
        lost = cluster.describe_lost_peer(e)  # a collective that failed because a process died
        if lost is None:
            raise
        return _fail(lost, cluster.CLUSTER_EXIT_STATUS)


def _fail(message: str, status: int) -> int:
    from mtbert_jax.errors import is_command_line

    if is_command_line():  # one line and the status, no interpreter shutdown (its threads print)
        exit_on_error(message, status)
    print(f"error: {message}", file=sys.stderr)
    return status
