"""``taskman worker`` starts one Celery worker per pool and prefetch: queues share a worker only when they take
as many messages ahead (``tui.processes.worker_commands``; tests/faults/test_dead_workers.py runs such workers)."""

from __future__ import annotations

from core.config import Settings
from tui.processes import worker_commands


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def served(settings: Settings, queues=(), prefetch=None) -> dict[str, tuple[str, str, str, str]]:
    """Worker name → (queues, pool, prefetch multiplier, node name)."""
    return {name: (option(command, "-Q"), option(command, "-P"), option(command, "--prefetch-multiplier"),
                   option(command, "-n"))
            for name, command in worker_commands(queues, None, "INFO", settings, prefetch)}


def test_by_default_code_registered_and_http_each_get_a_worker_with_their_own_prefetch():
    assert served(Settings()) == {"code": ("code", "prefork", "1", "code@%h"),
                                  "registered": ("registered", "prefork", "4", "registered@%h"),
                                  "http": ("http", "threads", "1", "http@%h")}


def test_queues_that_take_as_many_ahead_share_one_worker():
    same = Settings(prefetch_code=2, prefetch_registered=2)
    assert served(same) == {"code": ("code,registered", "prefork", "2", "code@%h"),
                            "http": ("http", "threads", "1", "http@%h")}
    assert served(Settings(), ("code", "registered"), prefetch=8) == {
        "code": ("code,registered", "prefork", "8", "code@%h")}


def test_a_queue_of_the_operators_own_is_served_like_registered():
    assert served(Settings(prefetch_registered=3), ("reports", "registered", "reports")) == {
        "reports": ("reports,registered", "prefork", "3", "reports@%h")}
    assert served(Settings(), ("long",), prefetch=1) == {"long": ("long", "prefork", "1", "long@%h")}
