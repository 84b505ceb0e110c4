"""Two ``taskman up`` on one data folder, in one process: who owns the stack, and who takes it over.

Each ``Stack`` here runs a real embedded ``redis-server`` and its real supervisor; only its children are
stand-ins (``sleep``, not Celery workers), so the hand-over logic is checked in a second or two. The whole
thing, with real ``taskman up`` processes and Celery workers, is ``tests/e2e/test_up_handover.py``.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from core.config import Settings
from core.embedded import (
    address_info,
    claim_data_dir,
    claim_holder,
    mark_stopping,
    release_claim,
    server_alive,
)
from tests.conftest import wait_for
from tui import processes
from tui.processes import Stack, Supervised


@pytest.fixture
def stacks(tmp_path, monkeypatch) -> Iterator:
    """Makes stacks on one private data folder (children: a ``sleep``), and closes them all afterwards."""

    def add_children(self: Stack, data_dir: Path) -> None:
        child = Supervised("sleeper", ["sleep", "60"], data_dir / "sleeper.log")
        self._spawn(child)
        self.supervised.append(child)

    monkeypatch.setattr(Stack, "_add_children", add_children)
    made: list[Stack] = []

    def make() -> Stack:
        stack = Stack(Settings(redis_url=None, data_dir=str(tmp_path / "data"), namespace="handover"))
        stack.on_report = stack.reports.append
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.close()


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def test_a_follower_takes_the_stack_over_on_the_same_url_when_the_owner_stops(stacks, tmp_path):
    owner = stacks().__enter__()
    assert owner.redis is not None and owner.following is None
    url = owner.settings.redis_url
    assert url is not None
    client(url).set("before", "kept")

    follower = stacks().__enter__()
    assert follower.following == claim_holder(tmp_path / "data")
    assert follower.settings.redis_url == url and follower.redis is None and not follower.supervised
    assert "this one takes over if it stops" in follower.display_url

    old_pid = owner.redis.pid
    owner.close()
    wait_for(lambda: follower.supervised and follower.redis and follower.redis.running(), timeout=15,
             message="the follower to take the stack over")
    assert follower.following is None
    assert follower.redis.pid != old_pid
    assert follower.settings.redis_url == url  # same port and password: clients of the old server reconnect
    assert client(url).get("before") == b"kept"  # the same append-only file
    address = address_info(tmp_path / "data")
    assert (address.pid, address.owner, address.stopping) == (follower.redis.pid, os.getpid(), False)
    said = "\n".join(follower.reports)
    assert "has stopped; this one takes the stack over" in said and "took the stack over" in said

    sleeper = follower.supervised[0].process
    follower.close()
    # Started by the supervisor thread, yet stopped by close() (SIGTERM), not killed as that thread ended.
    assert sleeper is not None and sleeper.returncode == -signal.SIGTERM
    assert address_info(tmp_path / "data").url is None
    assert claim_data_dir(tmp_path / "data") is not None  # close() gave the claim up


def test_an_up_starting_while_the_owner_stops_waits_for_it_instead_of_following(stacks, tmp_path, monkeypatch):
    owner = stacks().__enter__()
    assert owner.redis is not None and owner.settings.redis_url is not None
    client(owner.settings.redis_url).set("before", "kept")
    mark_stopping(tmp_path / "data", owner.redis.pid)  # what close() does first
    assert address_info(tmp_path / "data").stopping

    tries = []
    real_claim = processes.claim_data_dir
    monkeypatch.setattr(processes, "claim_data_dir", lambda data_dir: tries.append(1) or real_claim(data_dir))
    newcomer = stacks()
    entered = threading.Thread(target=newcomer.__enter__)
    entered.start()
    wait_for(lambda: len(tries) >= 3, timeout=10, message="the newcomer to find the stack stopping")
    assert entered.is_alive() and newcomer.following is None  # waiting, not following
    owner.close()
    entered.join(15)
    assert not entered.is_alive()
    assert newcomer.following is None and newcomer.redis is not None and newcomer.supervised
    assert f"pid {os.getpid()} is stopping its stack" in "\n".join(newcomer.reports)
    assert client(newcomer.settings.redis_url).get("before") == b"kept"


def test_of_two_followers_only_one_takes_the_stack_over(stacks, tmp_path):
    owner = stacks().__enter__()
    url = owner.settings.redis_url
    first, second = stacks().__enter__(), stacks().__enter__()
    assert first.following and second.following
    owner.close()
    winner = wait_for(lambda: next((s for s in (first, second) if s.supervised and s.redis), None), timeout=15,
                      message="one follower to take over")
    loser = second if winner is first else first
    assert loser.following is not None and loser.redis is None and loser.adopted_redis_pid is None
    assert claim_data_dir(tmp_path / "data") is None  # the winner holds the claim: nobody else can start Redis
    assert winner.settings.redis_url == loser.settings.redis_url == url
    assert client(url).ping()


def test_an_owner_killed_outright_leaves_its_redis_to_the_follower_which_replaces_it_when_it_goes(stacks, tmp_path):
    owner = stacks().__enter__()
    assert owner.redis is not None and owner._claim is not None and owner.settings.redis_url is not None
    url, redis_pid = owner.settings.redis_url, owner.redis.pid
    client(url).set("before", "kept")
    follower = stacks().__enter__()

    # As if the owner were SIGKILLed: its claim goes with it, its Redis stays (it outlives `up` on purpose).
    owner._stopping.set()
    owner._done.set()
    release_claim(owner._claim)
    owner._claim = None
    wait_for(lambda: follower.adopted_redis_pid == redis_pid and follower.supervised, timeout=15,
             message="the follower to adopt the Redis left running")
    assert address_info(tmp_path / "data").owner == os.getpid()
    assert "adopted the Redis" in "\n".join(follower.reports)

    owner.redis.stop()  # and now that Redis goes too
    wait_for(lambda: follower.redis and follower.redis.running(), timeout=15,
             message="the follower to start a Redis of its own")
    assert follower.adopted_redis_pid is None
    assert follower.settings.redis_url == url
    assert client(url).get("before") == b"kept"
    assert "the adopted Redis (pid" in "\n".join(follower.reports)


def test_only_a_server_working_in_the_folder_counts_as_the_folders_redis(stacks, tmp_path):
    owner = stacks().__enter__()
    assert owner.redis is not None
    server_dir = tmp_path / "data" / "redis"
    assert server_alive(owner.redis.pid, server_dir)
    assert not server_alive(owner.redis.pid, tmp_path)  # a Redis elsewhere that got an old server's pid
    assert not server_alive(os.getpid(), server_dir)  # not a redis-server at all
    assert address_info(tmp_path / "data", server_dir).pid == owner.redis.pid
    assert address_info(tmp_path / "data", tmp_path).pid is None
