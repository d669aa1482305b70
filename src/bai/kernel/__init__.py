"""The in-kernel runner: STDLIB ONLY, runs under any Python >= 3.8.

Started inside the kernel (a sandboxed process tree or a container) as::

    python3 -m bai.kernel --workdir /home/work

with ``PYTHONPATH`` pointing at a folder that holds this ``bai/kernel`` package (the process
backend passes ``src``; the docker backend bind-mounts the ``bai/kernel`` folder). It keeps one
persistent Python interpreter (the *worker*, ``worker.py``) per kernel and runs shell commands for
batch mode.

Files under ``<workdir>/.bai/`` (the runner creates the folder):

* ``runner.sock`` - the unix socket the agent connects to (transport below).
* ``runner.json`` - optional config the backend writes before start:
  ``{"bootstrap_script": str|null, "startup_command": str|null}``. The bootstrap script runs
  before the runner reports ready; the startup command runs after, and when it exits the runner
  exits with its status (the kernel ends; the agent reports ``self-terminated``).
* ``kernel.log`` - output produced outside executions (bootstrap, startup command, background
  processes writing after an execution finished). Served as the kernel's logs.
* ``exit.json`` - ``{"exit_code": n, "reason": "self-terminated"}`` written when the runner ends by
  itself (interpreter died, startup command finished), so an agent that was restarted meanwhile
  can still learn the exit code. ``"reason": "oom-killed"`` when what ended it was SIGKILLed
  (``n`` 137) while the OOM kill count of the runner's memory cgroup rose (``oom.py``).

Transport (agent <-> runner): one JSON object per line (UTF-8, ``\\n``-terminated) in both
directions over ``runner.sock``. Any number of connections; executions run one at a time (a second
``execute`` waits for the first to finish).

Agent -> runner::

    {"op": "ping"}                                   -> {"status": "pong", "ready": bool,
                                                         "pooled": bool, "worker_ready": bool}
    {"op": "claim", "workdir": str, "env": {...}, "config": {...}}
                                                     -> {"status": "claimed", "ready": bool}
        (a runner started with ``--pooled`` waits, not ready, until claimed: it then takes the
        work dir, environment and ``runner.json`` config of its kernel, its worker chdirs and
        replaces os.environ, then the bootstrap script runs and the runner is ready)
    {"op": "execute", "mode": "query", "code": str, "options": {}}
    {"op": "execute", "mode": "batch", "options": {"clean": str, "build": str, "exec": str},
     "uploaded": ["relative/path", ...]}            (files uploaded so far, in order)
    {"op": "input", "text": str}                     answers a "waiting-input" frame
    {"op": "interrupt"}                              SIGINT to the running execution
    {"op": "shutdown"}                               stop everything and exit 0

Runner -> agent, for an execution: frames in exactly the public execute-stream shape
(client-protocol §6.3)::

    {"status": "continued"|"waiting-input"|"clean-finished"|"build-finished"|"finished",
     "console": [["stdout", "..."], ["stderr", "..."]], "exitCode": int|null,
     "options": {}, "files": []}

``console`` is always a list (possibly empty); ``options`` carries ``is_password`` on
``waiting-input``; ``exitCode`` is set on ``*-finished``. Output is sent while it is produced (a
frame per burst of output, coalesced over a few milliseconds), including what child processes
write to file descriptors 1 and 2.

Query mode runs the code in the worker's persistent ``__main__`` namespace (the value of a final
expression statement is printed, as in a REPL); an uncaught exception prints its traceback to
stderr and gives exit code 1; ``SystemExit(n)`` gives ``n``. If the interpreter itself dies (e.g.
``os._exit`` or the OOM killer), the execution finishes with its status and the runner exits.

Batch mode runs ``clean``, ``build`` and ``exec`` in that order as ``/bin/sh -c`` commands in the
work directory; ``"*"`` or an empty string means "not given". ``clean`` and ``build`` that ran end
with ``clean-finished`` / ``build-finished``; a failing build skips exec and finishes with the
build's exit code. ``exec`` ``"*"`` runs the first uploaded ``.py`` file (else ``main.py`` when it
exists) with this Python interpreter; with nothing to run it finishes with exit code 127 and says
why on stderr.
"""

PROTOCOL_VERSION = 1
SOCKET_NAME = "runner.sock"
STATE_DIR = ".bai"
