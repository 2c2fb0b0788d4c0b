"""The web's only door to the workers: task names, the shared run queue, a host's own queue."""

from __future__ import annotations

from typing import Any

from celery import current_app

from isol8_site import dispatch


def test_tasks_go_by_name_to_the_run_queue_or_a_hosts_queue(monkeypatch, settings):
    sent: list[tuple[str, Any, dict[str, Any]]] = []
    monkeypatch.setattr(current_app, "send_task", lambda name, args, **kw: sent.append((name, args, kw)))
    dispatch.send(dispatch.RUN_EXECUTION, "e1")
    dispatch.send(dispatch.SESSION_FILE_OP, 7, "op", {"op": "get_file"}, queue=dispatch.host_queue("h1"))
    assert [(name, args, kw["queue"]) for name, args, kw in sent] == [
        ("isol8.run_execution", ("e1",), settings.ISOL8_RUN_QUEUE),
        ("isol8.session_file_op", (7, "op", {"op": "get_file"}), "isol8.host.h1"),
    ]
    assert all(kw["ignore_result"] for _, _, kw in sent)


def test_the_worker_registers_every_name_the_web_sends():
    from worker import tasks  # the worker's side: this test may import it, the web may not

    registered = {task.name for task in vars(tasks).values() if hasattr(task, "delay")}
    names = {dispatch.RUN_EXECUTION, dispatch.SESSION_FILE_OP, dispatch.STOP_SESSION_CONTAINER,
             dispatch.REMOVE_ORPHANS, dispatch.REAP, dispatch.PRUNE_SESSIONS}
    assert names <= registered
