"""The isol8 in-container launcher.

This package is copied into every sandbox image as /opt/isol8/isol8_launcher/,
next to its entry script /opt/isol8/launch.py (``python3 -I /opt/isol8/launch.py
MODE``), and only uses the standard library of the image's Python 3.

It speaks one small framed protocol with the worker (protocol.py), in two modes:

``serve``  The container's main process (under the init). It runs as root with
           exactly the capabilities SETUID, SETGID and SETPCAP, so that it can
           start the user's program as the unprivileged code user. It reads
           requests from its stdin (the container's attached stdin) and writes
           replies to its stdout, forever. This avoids one ``docker exec`` per run.
``once``   The ``docker exec`` fallback. It is exec'd as the code user itself,
           handles exactly one request from stdin and exits.

(``keepalive`` is the fallback's main process: it names the code user and waits.)

With ``--egress SOCKET`` (``network: "filtered"``), ``serve`` and ``keepalive``
also start the egress relay (relay.py): a process of its own, as uid 65534,
that connects the sandbox's 127.0.0.1:3128 to the host's egress gateway.

The code user can neither write to the launcher's stdout (it only ever holds its
own pipes, and the launcher's /proc entries belong to root) nor read the
launcher's memory or environment (different uid; ptrace and process_vm_* are
refused by the seccomp profile).

Modules: protocol (framing), paths (the code user's files, resolved beneath
their roots), procs (the code user's identity and processes), run (a run's
loop), forkclient and forkserver (the python fork server), kernel (a
stateful session's interpreter and its cells), ops (the operations and the
Launcher object that holds all state), relay (the egress relay), main (the
modes).
"""
