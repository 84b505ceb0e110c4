"""The Redis keyspace: the only module that knows key names.

Layout (every key under the namespace prefix ``{ns}:``, see ``Keys``):

- ``task:{id}``        hash: ``spec`` (JSON), ``state``, ``created_at``, ``updated_at``, ``next_run_at``,
                       ``last_run_id``, ``last_run_state``, ``last_duration_ms``, ``last_started_at``, and
                       ``recent_runs``, ``recent_ok``, ``recent_p95_ms`` (a summary of ``task:{id}:outcomes``;
                       older records lack these). The user-edited definition (``spec``) lives apart from the
                       runtime fields, as in redbeat.
- ``tasks``            sorted set of task ids scored by creation time (listing, newest first).
- ``task:{id}:runs``   sorted set of that task's run ids scored by queue time (history).
- ``task:{id}:outcomes`` list of the task's last ``RECENT_OUTCOMES`` finished runs, newest first, each
                       ``s DURATION_MS`` (succeeded) or ``f DURATION_MS`` (failed or timed out).
- ``run:{id}``         hash: one run record (see ``core.models.Run``); the Celery task id is the run id.
- ``due``              sorted set scored by due time: ``t:{task_id}`` fires a task (delay or cron),
                       ``r:{run_id}`` a queued run's send guard (a retry's backoff; otherwise kept until the
                       run starts, see ``CHECK_SENT``),
                       ``p:{batch}`` finishes or undoes a batch of prepared fires (see ``PUBLISH``).
- ``fire:{batch}:staged`` hash: run id → its queue, for fires prepared ahead of their due time and not
                       published yet (their messages wait in the scheduler).
- ``fire:{batch}:fired``  list of "run_id queued_at [next_due]" of fires published and not yet committed.
- ``fire:{batch}:pushed:{nonce}`` a mark that lives within one transaction that pushes a batch's messages.
- ``events``, ``logs`` capped streams that front ends tail with XREAD BLOCK.
- ``scheduler:lock``   the scheduler's lock; its value is the owner's token.
- ``registered``       hash of worker name → JSON of the task names it registered and the queues it serves.
- ``tokens``           hash: API token name → JSON record (role, created_at, sha256 of the secret).
- ``tokens:by-hash``   hash: sha256 of a secret → JSON {name, role}; the secret itself is never stored.
- ``tokens:used``      hash: token name → when it last authenticated a request (coarse).
- ``audit``            stream of changes: ts, actor, action, target, detail (JSON); trimmed by time only
                       (entries older than the retention window), never by length.
- ``ratelimit:{name}`` hash: the API token's allowance (``tokens`` left, ``at`` when last counted).
- ``metrics``          hash of counters kept incrementally (see ``core.metrics`` for its fields).
- ``workers``          sorted set: worker hostname scored by its last heartbeat.
- ``workers:stats``    hash: worker hostname → JSON of what it said with its last heartbeat (host, pid,
                       pool, concurrency, runs active, messages processed).
- ``workers:lives``    sorted set: ``node#id`` of each start of a worker scored by its last heartbeat (a run
                       records the life that runs it; the dead-worker watch follows that).
- ``workers:held``     hash: ``node#id`` of a worker's life → the ids of the messages it holds (reserved or
                       running), space-separated, as of its last heartbeat (``CHECK_SENT`` tells a message
                       a live worker holds from one a dead worker prefetched).
- ``workers:ended``    sorted set: the id of each start of a worker its supervisor saw exit (``taskman up``),
                       scored by when; kept an hour (the watch looks every 2 s; a worker that keeps dying adds
                       one a minute). Its runs are handed over at once, not after the grace.
- ``running``          sorted set: id of each running run scored by when it started (the dead-worker watch).
- ``epoch``            a random id written once into a Redis; if it vanishes or changes, Redis lost its data.
- ``data-lost``        JSON {at, was, now}: when the scheduler found the epoch gone or changed.

A run's hash carries ``fence``: how many times the run was handed to another worker because its
worker fell silent. Every message carries the fence it was sent with, and every transition a worker
makes checks it, so a stale message or a worker that was only slow can never start or end the run.
It also carries ``sent_fence`` and ``sent_queue``: the fence and queue of the last message sent for it
(written with the push, ``MARK_SENT``), so a send guard that comes up tells "never sent" from "sent".

Every state change that depends on what is stored is one Lua script (KEYS/ARGV documented with
each), so two actors (a worker finishing, an operator stopping) can never interleave.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import redis

from core import redis_trouble  # (importing it makes MISCONF a ConnectionError for every client of the store)
from core.models import CODE_QUEUE, HTTP_QUEUE, Run, RunState, Task, TaskState

# The client is made with ``decode_responses=True`` (``connect``), so every reply is ``str``; redis-py's
# annotations cannot know that and say ``bytes | str``, hence the ``cast``s below. Its ``mapping``
# parameters are invariant in the key type, so they refuse a ``dict[str, str]`` (the ``type: ignore``s).
Entry = tuple[str, dict[str, str]]
"""One stream entry: (id, fields)."""

RUN_FIELDS_JSON = ("result", "overrides")
RUN_FIELDS_FLOAT = ("queued_at", "scheduled_for", "started_at", "finished_at", "duration_ms")


@dataclass(frozen=True)
class Keys:
    """Builds every Redis key from the namespace; a unit test pins the exact strings."""

    namespace: str

    def _key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    def task(self, task_id: str) -> str:
        return self._key("task", task_id)

    def task_runs(self, task_id: str) -> str:
        return self._key("task", task_id, "runs")

    def task_outcomes(self, task_id: str) -> str:
        return self._key("task", task_id, "outcomes")

    def run(self, run_id: str) -> str:
        return self._key("run", run_id)

    @property
    def tasks(self) -> str:
        return self._key("tasks")

    @property
    def due(self) -> str:
        return self._key("due")

    @property
    def events(self) -> str:
        return self._key("events")

    @property
    def logs(self) -> str:
        return self._key("logs")

    @property
    def scheduler_lock(self) -> str:
        return self._key("scheduler", "lock")

    @property
    def registered(self) -> str:
        return self._key("registered")

    @property
    def celery_prefix(self) -> str:
        """Prefix kombu puts before Celery's own keys (queues, unacked), so namespaces never mix."""
        return self._key("celery") + ":"

    def celery_queue(self, queue: str) -> str:
        """The Redis list kombu keeps a Celery queue's waiting messages in."""
        return self.celery_prefix + queue

    def fire_staged(self, batch: str) -> str:
        """A batch of prepared fires' messages, by run id, until each is published (``PUBLISH``)."""
        return self._key("fire", batch, "staged")

    def fire_mark(self, batch: str) -> str:
        """Set by a transaction that pushes a batch's messages, and read by its ``PUBLISH`` (a fresh one each)."""
        return self._key("fire", batch, "pushed", uuid.uuid4().hex[:12])

    def fire_fired(self, batch: str) -> str:
        """A batch's published fires whose bookkeeping (``COMMIT``) is still to do."""
        return self._key("fire", batch, "fired")

    @property
    def celery_unacked(self) -> str:
        """kombu's hash of messages delivered to workers and not yet acknowledged."""
        return self.celery_prefix + "unacked"

    @property
    def celery_unacked_index(self) -> str:
        """kombu's sorted set of those messages' delivery tags, scored by when they were delivered."""
        return self.celery_prefix + "unacked_index"

    @property
    def tokens(self) -> str:
        return self._key("tokens")

    @property
    def token_hashes(self) -> str:
        return self._key("tokens", "by-hash")

    @property
    def token_used(self) -> str:
        return self._key("tokens", "used")

    @property
    def audit(self) -> str:
        return self._key("audit")

    def rate_limit(self, token_name: str) -> str:
        """An API token's allowance of changes (see ``Store.take_allowance``)."""
        return self._key("ratelimit", token_name)

    @property
    def metrics(self) -> str:
        return self._key("metrics")

    @property
    def workers(self) -> str:
        return self._key("workers")

    @property
    def worker_lives(self) -> str:
        return self._key("workers", "lives")

    @property
    def worker_stats(self) -> str:
        return self._key("workers", "stats")

    @property
    def worker_held(self) -> str:
        return self._key("workers", "held")

    @property
    def worker_ended(self) -> str:
        return self._key("workers", "ended")

    @property
    def running(self) -> str:
        return self._key("running")

    @property
    def epoch(self) -> str:
        return self._key("epoch")

    @property
    def data_lost(self) -> str:
        return self._key("data-lost")


@dataclass(frozen=True)
class Fire:
    """One claimed due entry to record as a run: what :meth:`Store.fire` takes besides the clock and token."""

    task: Task
    run: Run
    next_due: float | None
    """The task's next due time (a cron task), or None: a one-shot whose entry goes."""
    event: dict
    leased_to: float
    """The score the claim leased the entry to (the fire happens only while the entry still holds it)."""
    due_at: float
    """The entry's due time before the claim (where it goes back if the lock was lost)."""
    send_guard_at: float


def due_member_for_task(task_id: str) -> str:
    return f"t:{task_id}"


def due_member_for_run(run_id: str) -> str:
    return f"r:{run_id}"


def due_member_for_batch(batch: str) -> str:
    return f"p:{batch}"


@dataclass
class Prepared:
    """A fire prepared ahead of its due time: its run is written, its message staged (``Store.stage``);
    at the due time ``PUBLISH`` pushes the message and moves the entry, and ``COMMIT`` records the rest."""

    member: str
    due_at: float
    leased_to: float
    """The score the claim leased the entry to: the fire happens only while the entry still holds it."""
    task: Task
    run: Run
    queue: str
    message: str
    next_due: float | None
    """The task's next due time (a cron task) as of the due time, or None: a one-shot whose entry goes."""
    batch: str
    wire: tuple[float | None, tuple[str, ...]] | None = None
    """How ``PUBLISH`` reads it, for that ``next_due`` (``Store._wire``)."""
    packed: bytes = b""
    """Its message as one argument of a Redis command (``Store.stage``), so the due instant only joins them."""
    armed: bool = False
    """Whether its transaction is open ahead (``Store.arm``): it is published with it, never apart."""


@dataclass(eq=False)
class Armed:
    """Prepared fires whose transaction was opened ahead of their due time on a connection of its own
    (``Store.arm``): MULTI, its mark and the LPUSH of their messages wait in Redis, so the due instant sends
    only ``PUBLISH`` and EXEC, not a megabyte of messages per 1,000 fires."""

    fires: list[Prepared]
    connection: Any
    mark: str
    owed: int
    """Replies Redis owes for what was sent ahead (MULTI's, the mark's and each LPUSH's)."""
    wire: str
    """The fires as ``PUBLISH`` reads them, joined ahead too (``Store.publish`` joins them again should a
    fire's next due time change meanwhile)."""
    used: bool = False
    """Whether ``Store.publish`` or ``Store.disarm`` has taken it (it is used once; ``disarm`` then does
    nothing)."""


# KEYS[1] run hash, KEYS[2] events stream
# ARGV[1] comma-separated states the run may be in, ARGV[2] new state, ARGV[3] event JSON ('' = none;
# the script fills in its task_id and state),
# ARGV[4] events maxlen, ARGV[5] the fence the caller acts under ('' = unchecked), ARGV[6] 'add' or
# 'rem' to enter or leave the running set (KEYS[3]) with the transition ('' = neither),
# ARGV[7] a log line JSON to append to the log stream (KEYS[5]) with the transition ('' = none; the script
# fills in its ``task``) -- if it carries ``"fresh": true``, only if the run was not running already (a
# redelivery: the caller says so first), with the run's attempt and max_attempts for ``{attempt}`` and
# ``{max_attempts}`` in its ``msg``; ARGV[8]
# the log stream's maxlen, ARGV[9..] field, value pairs to set with the new state. KEYS[4] due set: a run
# entering the running set (a worker starts it) leaves its send guard (``r:<run>``) there, so a started run
# is never sent again.
# Returns the previous state if the transition happened, false otherwise (missing run: false).
TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return false end
local allowed = false
for state in string.gmatch(ARGV[1], '[^,]+') do
  if state == current then allowed = true end
end
if not allowed then return false end
if ARGV[5] ~= '' and (redis.call('HGET', KEYS[1], 'fence') or '0') ~= ARGV[5] then return false end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
for i = 9, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
local line = ARGV[7] ~= '' and cjson.decode(ARGV[7])
if line and not (line['fresh'] and current == 'running') then
  local f = redis.call('HMGET', KEYS[1], 'task_id', 'attempt', 'max_attempts')
  local msg = line['msg']
  if line['fresh'] then
    msg = string.gsub(msg, '{attempt}', f[2] or '?')
    msg = string.gsub(msg, '{max_attempts}', f[3] or '?')
  end
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[8], '*', 'ts', line['ts'], 'task', f[1] or '', 'run', line['run'],
             'level', line['level'], 'msg', msg)
end
if ARGV[6] == 'add' then
  local id = redis.call('HGET', KEYS[1], 'id')
  redis.call('ZADD', KEYS[3], redis.call('TIME')[1], id)
  redis.call('ZREM', KEYS[4], 'r:' .. id)
elseif ARGV[6] == 'rem' then
  redis.call('ZREM', KEYS[3], redis.call('HGET', KEYS[1], 'id'))
end
if ARGV[3] ~= '' then
  local event = cjson.decode(ARGV[3])
  event['task_id'] = redis.call('HGET', KEYS[1], 'task_id')
  event['state'] = ARGV[2]
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'event', cjson.encode(event))
end
return current
"""

# KEYS: the hashes of runs whose messages were just pushed (in the same transaction as the pushes)
# ARGV: per run, the fence its message carries and the queue it was pushed onto
# Records on each run (that still exists) the fence and queue its message was sent with (``sent_fence``,
# ``sent_queue``): when its send guard comes up, ``CHECK_SENT`` tells a run never sent under its fence from
# one sent and not started yet. Keys are whole (the dispatcher runs it through kombu's client, which does
# not prefix EVAL's keys).
MARK_SENT = """
for i = 1, #KEYS do
  if redis.call('HEXISTS', KEYS[i], 'state') == 1 then
    redis.call('HSET', KEYS[i], 'sent_fence', ARGV[2 * i - 1], 'sent_queue', ARGV[2 * i])
  end
end
return #KEYS
"""

# KEYS[1] run hash, KEYS[2] scheduler lock, KEYS[3] due set, KEYS[4] the list of the queue the run's message
# was sent to (as read just before: ARGV[3]), KEYS[5] kombu's unacked hash, KEYS[6] kombu's unacked index,
# KEYS[7] the worker lives zset, KEYS[8] the hash of what each life holds
# ARGV[1] the checker's lock token, ARGV[2] the run's due member (r:), ARGV[3] the queue read with the run
# ('' = none), ARGV[4] the most unacked entries searched, ARGV[5] the run id, ARGV[6] seconds after a message's
# delivery (by the worker's clock) from which a heartbeat (by Redis's) surely lists it if that worker holds it,
# ARGV[7] seconds of silence after which a worker is dead, ARGV[8] '1' to search the unacked hash even when the
# queue's list is not empty (a dead worker held the run: ``HASTEN_HELD``; else a backlog spares the search)
# A queued run's send guard came up (its lease ran out, or a retry's backoff ended, or a dead worker's watch
# brought it forward). Returns {verdict, fence}:
# 'lock' the checker lost the lock (leave it); 'gone' the run is no longer queued (its guard goes);
# 'unsent' no message was sent under its fence (a retry, a send that raised or whose sender died): its fence
# moves on (so a message sent after all is refused on arrival) and the caller sends it under the new one;
# 'waiting' its message was sent and may still be waiting: kombu's unacked hash (reserved or running messages
# only, so small) holds a message naming the run that a live worker may hold (its heartbeat lists it, or it
# has not beaten since the message was delivered, or it lists nothing: a worker from before the list); or the
# queue's list is not empty (a backlog; unless ARGV[8], the hash is then not searched); or the hash holds more
# than ARGV[4] (too many to search: looked at again after a lease);
# 'orphaned' its message is in the unacked hash but held by no live worker (a worker prefetched it, then died):
# that entry goes (so kombu never redelivers it), its fence moves on and the caller sends it again;
# 'lost' its message was sent but is nowhere (a worker took it off the list and died before recording it in
# unacked): its fence moves on and the caller sends it again; 'moved' it was sent again to another queue since
# it was read (look later).
CHECK_SENT = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {'lock', 0} end
local f = redis.call('HMGET', KEYS[1], 'state', 'fence', 'sent_fence', 'sent_queue')
if f[1] ~= 'queued' then
  redis.call('ZREM', KEYS[3], ARGV[2])
  return {'gone', 0}
end
if f[3] ~= (f[2] or '0') then return {'unsent', redis.call('HINCRBY', KEYS[1], 'fence', 1)} end
if (f[4] or '') ~= ARGV[3] then return {'moved', 0} end
if redis.call('HLEN', KEYS[5]) > tonumber(ARGV[4]) then return {'waiting', 0} end
if ARGV[8] ~= '1' and redis.call('LLEN', KEYS[4]) > 0 then return {'waiting', 0} end
local entries = redis.call('HGETALL', KEYS[5])
for i = 1, #entries, 2 do
  if string.find(entries[i + 1], ARGV[5], 1, true) then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
    local listed_after = tonumber(redis.call('ZSCORE', KEYS[6], entries[i]) or now) + tonumber(ARGV[6])
    local needle = ' ' .. ARGV[5] .. ' '
    local lives = redis.call('ZRANGEBYSCORE', KEYS[7], now - tonumber(ARGV[7]), '+inf', 'WITHSCORES')
    for j = 1, #lives, 2 do
      local held = redis.call('HGET', KEYS[8], lives[j])
      if not held or tonumber(lives[j + 1]) < listed_after or string.find(' ' .. held .. ' ', needle, 1, true) then
        return {'waiting', 0}
      end
    end
    redis.call('HDEL', KEYS[5], entries[i])
    redis.call('ZREM', KEYS[6], entries[i])
    return {'orphaned', redis.call('HINCRBY', KEYS[1], 'fence', 1)}
  end
end
if redis.call('LLEN', KEYS[4]) > 0 then return {'waiting', 0} end
return {'lost', redis.call('HINCRBY', KEYS[1], 'fence', 1)}
"""

# KEYS[1] run hash, KEYS[2] running set, KEYS[3] events stream, KEYS[4] due set
# ARGV[1] the fence the run was found with, ARGV[2] event JSON, ARGV[3] events maxlen,
# ARGV[4] send-guard due member, ARGV[5] its score.
# Hands a running run whose worker fell silent back to the queue under a new fence (so the old
# worker's message and its late finish are refused) with a send guard; returns the new fence, or
# false if the run is no longer running under that fence (it is then dropped from the running set).
REQUEUE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' or (redis.call('HGET', KEYS[1], 'fence') or '0') ~= ARGV[1] then
  if redis.call('HGET', KEYS[1], 'state') ~= 'running' then
    redis.call('ZREM', KEYS[2], redis.call('HGET', KEYS[1], 'id') or '')
  end
  return false
end
local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'state', 'queued', 'worker', '', 'node', '', 'deliveries', '0')
redis.call('ZREM', KEYS[2], redis.call('HGET', KEYS[1], 'id'))
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[4])
local event = cjson.decode(ARGV[2])
event['task_id'] = redis.call('HGET', KEYS[1], 'task_id')
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'event', cjson.encode(event))
return fence
"""

RECENT_OUTCOMES = 30
"""How many of a task's latest finished runs its success rate and p95 duration are taken over."""

# KEYS[1] task hash, KEYS[2] run hash, KEYS[3] the task's outcomes list
# ARGV[1] run id, ARGV[2] its state, ARGV[3] its duration in ms ('' = none), ARGV[4] outcomes kept
# Acts only if the run holds that state and its task still exists (a finish that lost to a stop, or to a
# newer fence, changes nothing). Updates the task's last-run summary (state, duration, when the run
# started) only if that run is still the task's latest. A run that ended succeeded, failed or timed out
# joins the task's outcomes once (the run's ``tallied`` mark), and the task hash keeps their summary
# (count, successes, p95 duration by nearest rank), so reading a task reads it at no extra cost.
LAST_RUN = """
if redis.call('HGET', KEYS[2], 'state') ~= ARGV[2] or redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'last_run_id') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'last_run_state', ARGV[2], 'last_duration_ms', ARGV[3],
             'last_started_at', redis.call('HGET', KEYS[2], 'started_at') or '')
end
if ARGV[2] ~= 'succeeded' and ARGV[2] ~= 'failed' and ARGV[2] ~= 'timed_out' then return 1 end
if redis.call('HSETNX', KEYS[2], 'tallied', '1') == 0 then return 1 end
redis.call('LPUSH', KEYS[3], (ARGV[2] == 'succeeded' and 's ' or 'f ') .. ARGV[3])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[4]) - 1)
local entries = redis.call('LRANGE', KEYS[3], 0, -1)
local ok, durations = 0, {}
for _, entry in ipairs(entries) do
  if string.sub(entry, 1, 1) == 's' then ok = ok + 1 end
  local ms = tonumber(string.sub(entry, 3))
  if ms then durations[#durations + 1] = ms end
end
local p95 = ''
if #durations > 0 then
  table.sort(durations)
  p95 = string.format('%.3f', durations[math.ceil(#durations * 0.95)])
end
redis.call('HSET', KEYS[1], 'recent_runs', #entries, 'recent_ok', ok, 'recent_p95_ms', p95)
return 1
"""

# KEYS[1] task hash, KEYS[2] due set, KEYS[3] run hash, KEYS[4] task's runs set, KEYS[5] events stream
# ARGV[1] due member, ARGV[2] next due score ('' = one-shot: remove from due set, task becomes done),
# ARGV[3] run fields as a flat JSON object, ARGV[4] now, ARGV[5] event JSON, ARGV[6] events maxlen,
# ARGV[7] history size kept per task, ARGV[8] send-guard due member ('' = none), ARGV[9] its score,
# KEYS[6] scheduler lock, ARGV[10] the firing scheduler's lock token, ARGV[11] the score its claim
# leased the entry to, ARGV[12] the entry's due time before the claim.
# Fenced twice: the entry must still hold this claim's lease (an edit, a pause, or another scheduler
# claiming it after the lease ran out all change it) and the firer must still hold the lock; a firer
# that lost the lock (frozen past it) hands the entry back at its due time for the holder to fire.
# The send guard is the run's own due entry, due when the lease ends: if the message is never sent
# (the scheduler dies, or the send fails), or is lost after it was, the run is sent again then (see
# ``CHECK_SENT``); the run's start removes it.
# Fires a task only while it is active, so a pause or delete racing the scheduler always wins.
# Returns 1 if a run was created, 0 if not: the claim or lock was lost, or the task is gone or not
# active (its due entry is then dropped).
FIRE = """
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[11]) then return 0 end
if redis.call('GET', KEYS[6]) ~= ARGV[10] then
  redis.call('ZADD', KEYS[2], ARGV[12], ARGV[1])
  return 0
end
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'active' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
local fields = cjson.decode(ARGV[3])
for k, v in pairs(fields) do redis.call('HSET', KEYS[3], k, v) end
redis.call('ZADD', KEYS[4], ARGV[4], fields['id'])
if ARGV[2] == '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[1], 'state', 'done', 'next_run_at', '')
else
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
  redis.call('HSET', KEYS[1], 'next_run_at', ARGV[2])
end
redis.call('HSET', KEYS[1], 'last_run_id', fields['id'], 'last_run_state', 'queued', 'last_duration_ms', '')
if ARGV[8] ~= '' then redis.call('ZADD', KEYS[2], ARGV[9], ARGV[8]) end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[6], '*', 'event', ARGV[5])
local excess = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[7])
if excess > 0 then redis.call('ZREMRANGEBYRANK', KEYS[4], 0, excess - 1) end
return 1
"""

# KEYS[1] failed run hash, KEYS[2] retry run hash, KEYS[3] task's runs set, KEYS[4] task hash,
# KEYS[5] due set, KEYS[6] events stream
# ARGV[1] retry run fields as a flat JSON object, ARGV[2] its due member, ARGV[3] its due time,
# ARGV[4] event JSON, ARGV[5] events maxlen, ARGV[6] history size kept per task.
# Queued in the same MULTI as the failed attempt's transition: the successor exists exactly when the
# attempt became 'retrying' (a stop that won the race leaves none), and never without its due entry.
RETRY = """
if redis.call('HGET', KEYS[1], 'state') ~= 'retrying' or redis.call('HGET', KEYS[1], 'retry_run') then
  return 0
end
local fields = cjson.decode(ARGV[1])
for k, v in pairs(fields) do redis.call('HSET', KEYS[2], k, v) end
redis.call('HSET', KEYS[1], 'retry_run', fields['id'])
redis.call('ZADD', KEYS[3], ARGV[3], fields['id'])
redis.call('HSET', KEYS[4], 'last_run_id', fields['id'], 'last_run_state', 'queued', 'last_duration_ms', '')
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[2])
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[5], '*', 'event', ARGV[4])
local excess = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[6])
if excess > 0 then redis.call('ZREMRANGEBYRANK', KEYS[3], 0, excess - 1) end
return 1
"""

# KEYS[1] epoch, KEYS[2] data-lost record
# ARGV[1] the epoch the caller saw last ('' = none yet), ARGV[2] a new epoch id, ARGV[3] now
# Returns {epoch, verdict}: 'same', 'new' (first sight, or a fresh install), or 'lost' (the epoch the
# caller saw is gone or replaced: Redis came back without its data, or another data set).
EPOCH = """
local current = redis.call('GET', KEYS[1])
if current and (ARGV[1] == '' or current == ARGV[1]) then
  return {current, ARGV[1] == '' and 'new' or 'same'}
end
if not current then
  redis.call('SET', KEYS[1], ARGV[2])
  current = ARGV[2]
end
if ARGV[1] == '' then return {current, 'new'} end
redis.call('SET', KEYS[2], cjson.encode({at = tonumber(ARGV[3]), was = ARGV[1], now = current}))
return {current, 'lost'}
"""

# KEYS[1] due set, KEYS[2] scheduler lock
# ARGV[1] now, ARGV[2] lease seconds, ARGV[3] max entries, ARGV[4] the claimer's lock token,
# ARGV[5] look-ahead seconds (0 = none), ARGV[6] how long past its due time an entry claimed ahead stays leased
# (the hold), ARGV[7] seconds the claimer takes to prepare a fire ('' or 0 = do not stretch the look-ahead).
# Claims due entries by pushing their score to now + lease: a scheduler that dies before sending
# leaves them to fire again after the lease (at-least-once), and nothing else sees them meanwhile.
# With a look-ahead, tasks' entries (``t:``) due within it are claimed too, leased to their due time plus
# ARGV[6] (a scheduler that dies holding them gives them back soon after they were due, not a lease later).
# When more entries fall due within the hold than the claimer could prepare within the look-ahead, it
# looks as far as the hold (never further: it would claim its own held entries again).
# Only the lock's holder claims: a scheduler frozen past its lock claims nothing when it wakes.
# Returns a flat list member, original score, leased score, ...
CLAIM = """
if redis.call('GET', KEYS[2]) ~= ARGV[4] then return {} end
local limit = tonumber(ARGV[3])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, limit)
local leased = string.format('%.17g', tonumber(ARGV[1]) + tonumber(ARGV[2]))
local claimed = {}
for i = 1, #due, 2 do
  redis.call('ZADD', KEYS[1], leased, due[i])
  claimed[#claimed + 1] = due[i]
  claimed[#claimed + 1] = due[i + 1]
  claimed[#claimed + 1] = leased
end
local ahead = tonumber(ARGV[5] or '0')
local per_fire = tonumber(ARGV[7] or '0')
if ahead > 0 and per_fire > 0 and tonumber(ARGV[6]) > ahead then
  -- more falling due within the hold than the look-ahead leaves the time to prepare: look as far as the hold
  local coming = redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[1], tonumber(ARGV[1]) + tonumber(ARGV[6]))
  if coming * per_fire * 2 > ahead then ahead = tonumber(ARGV[6]) end
end
if ahead > 0 and #due < 2 * limit then
  local soon = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], tonumber(ARGV[1]) + ahead, 'WITHSCORES',
                          'LIMIT', 0, limit - #due / 2)
  for i = 1, #soon, 2 do
    if string.sub(soon[i], 1, 2) == 't:' then
      local until_ = string.format('%.17g', tonumber(soon[i + 1]) + tonumber(ARGV[6]))
      redis.call('ZADD', KEYS[1], until_, soon[i])
      claimed[#claimed + 1] = soon[i]
      claimed[#claimed + 1] = soon[i + 1]
      claimed[#claimed + 1] = until_
    end
  end
end
return claimed
"""

# KEYS[1] due set, KEYS[2] scheduler lock, KEYS[3] the batch's staged runs, KEYS[4] its fired runs, KEYS[5] the
# transaction's mark (``Store.publish``: set, first thing, by the transaction that pushes the fires' messages),
# KEYS[6..] the queues' lists (kombu's keys)
# ARGV[1] the publisher's lock token, ARGV[2] queued_at (now), ARGV[3] '1' to hand every fire back,
# ARGV[4] a JSON array of six arrays, one value per fire in each: its due member, the score its claim leased
# it to, its due time, its run id, its queue's index among KEYS[6..] (1-based), its next due score as a
# string ('' = a one-shot: the entry goes); but for the last five, one value instead of an array if it is
# every fire's (a burst's fires share most); ARGV[5] a value no message is, to mark those to take back.
# The due instant of prepared fires. Their messages are pushed first, in the transaction this script ends
# (per queue, in the fires' order, with one LPUSH), so that their bytes never pass through it; it keeps those
# whose fires happen and takes back the rest before anyone can read the lists. Only if the transaction's mark
# is there were they pushed: a script that ran without them takes nothing back. A fire happens if its entry
# still holds its claim's lease (an edit, a pause, a delete or another claim all change it) and its run is
# still staged (not published already: a group tried again after a lost answer). For each, the entry moves
# to its next due time (or goes), the run leaves the staged hash and joins the batch's fired list for
# ``COMMIT`` (which gives it its send guard) — all at once with its message, so a fire's message is sent
# exactly when its entry moves on. A publisher that lost the lock (frozen past it) takes every message back
# and hands the entries back at their due time for the holder to fire. A fire not published stays staged,
# which the batch's ``p:`` entry undoes later (its run is then deleted). Returns a string of one character
# per fire: 1 published, 0 not.
PUBLISH = """
local fires = cjson.decode(ARGV[4])
local n = #fires[1]
for c = 2, 6 do
  if type(fires[c]) ~= 'table' then
    local same = fires[c]
    fires[c] = {}
    for i = 1, n do fires[c][i] = same end
  end
end
local members, leases, dues, runs, queues, nexts = fires[1], fires[2], fires[3], fires[4], fires[5], fires[6]
local pushed, place = {}, {}
if redis.call('DEL', KEYS[5]) == 1 then
  for i = 1, n do
    pushed[queues[i]] = (pushed[queues[i]] or 0) + 1
    place[i] = pushed[queues[i]]
  end
end
local published = {}
if ARGV[3] == '1' or redis.call('GET', KEYS[2]) ~= ARGV[1] then
  for q, count in pairs(pushed) do redis.call('LTRIM', KEYS[5 + q], count, -1) end
  for i = 1, n do
    local score = redis.call('ZSCORE', KEYS[1], members[i])
    if score and tonumber(score) == leases[i] then redis.call('ZADD', KEYS[1], dues[i], members[i]) end
    published[i] = '0'
  end
  return table.concat(published)
end
local scores = redis.call('ZMSCORE', KEYS[1], unpack(members))
local staged = redis.call('HMGET', KEYS[3], unpack(runs))
local moves, drops, fired, sent, taken = {}, {}, {}, {}, {}
for i = 1, n do
  if scores[i] and staged[i] and tonumber(scores[i]) == leases[i] then
    if nexts[i] == '' then
      drops[#drops + 1] = members[i]
      fired[#fired + 1] = runs[i] .. ' ' .. ARGV[2]
    else
      moves[#moves + 1] = nexts[i]
      moves[#moves + 1] = members[i]
      fired[#fired + 1] = runs[i] .. ' ' .. ARGV[2] .. ' ' .. nexts[i]
    end
    sent[#sent + 1] = runs[i]
    published[i] = '1'
  else
    published[i] = '0'
    if place[i] then
      local back = taken[queues[i]]
      if not back then
        back = {}
        taken[queues[i]] = back
      end
      back[#back + 1] = place[i]
    end
  end
end
for q, back in pairs(taken) do
  local count = pushed[q]
  if #back == count then
    redis.call('LTRIM', KEYS[5 + q], count, -1)
  else
    for _, at in ipairs(back) do redis.call('LSET', KEYS[5 + q], count - at, ARGV[5]) end
    redis.call('LREM', KEYS[5 + q], #back, ARGV[5])
  end
end
if #moves > 0 then redis.call('ZADD', KEYS[1], unpack(moves)) end
if #drops > 0 then redis.call('ZREM', KEYS[1], unpack(drops)) end
if #sent > 0 then
  redis.call('RPUSH', KEYS[4], unpack(fired))
  redis.call('HDEL', KEYS[3], unpack(sent))
end
return table.concat(published)
"""

# KEYS[1] a publish's mark (``Store.fire_mark``), KEYS[2..] per message its queue; ARGV[1..] the messages
# Takes back a failed publish's pushes if its script never began (the mark stands): 1 if it took them back.
TAKE_BACK = """
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
for i = 2, #KEYS do redis.call('LREM', KEYS[i], 1, ARGV[i - 1]) end
return 1
"""

def lock_token() -> str:
    """A scheduler's lock token: unique (a random id) and naming its process (``id.pid@host``), so a supervisor
    that saw that process exit can free the lock (``Store.free_lock_of``)."""
    return f"{uuid.uuid4().hex}.{os.getpid()}@{socket.gethostname()}"


LIFE_ID = re.compile(r"[0-9a-f]{12,32}")
"""One start of a worker (``worker.LIFE``): what a run's ``node`` field carries after the ``#``."""
ENDED_KEPT = 3600.0
"""Seconds a worker start its supervisor saw exit stays noted as ended (after that, the grace applies)."""

UNPUBLISHED = "taskman: a message taken back"
"""What ``PUBLISH`` overwrites a message it takes back with before removing it (no message is this)."""

# KEYS[1] due set; ARGV[1] due member, ARGV[2] the score a claim leased it to, ARGV[3] its due time
# Gives a claimed entry back at its due time if it still holds that claim's lease.
HAND_BACK = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
return 0
"""

# KEYS[1] the batch's fired list, KEYS[2] its staged messages, KEYS[3] due set, KEYS[4] events stream,
# then per run three keys: its hash, its task's hash, its task's runs set
# ARGV[1] the batch's due member (p:), ARGV[2] events maxlen, ARGV[3] history size kept per task,
# ARGV[4] seconds from a run's queue time to its send guard, ARGV[5..] the run ids expected at the head of
# the fired list, in order
# The bookkeeping of published fires, after their messages left: each run at the head of the fired list
# (while it is the one expected) gets its queue time, its send guard (``r:<run>``, due a lease after it was
# queued, unless a worker has started it already or it has one: its message may still be lost by a worker
# that dies taking it, see ``CHECK_SENT``; it was staged with its ``sent_fence`` and ``sent_queue``), joins
# its task's history, becomes the task's latest
# run (unless a later one is already: a retry of it, say) with the state and start it has now (a worker
# may have started or finished it meanwhile), and its event; a one-shot task becomes done (unless an edit
# gave it a new due time), a cron task shows its next due time (unless an edit or a pause moved it). A run
# leaves the list as it is committed, so each is committed once. When the batch holds nothing more, its p:
# entry goes.
# Returns how many runs left the list.
COMMIT = """
local head = redis.call('LRANGE', KEYS[1], 0, #ARGV - 5)
local done = 0
for i = 1, #head do
  local run_id, queued_at, next_due = string.match(head[i], '^(%S+) (%S+) ?(.*)$')
  if run_id ~= ARGV[4 + i] then break end
  done = i
  local run, task, runs = KEYS[2 + i * 3], KEYS[3 + i * 3], KEYS[4 + i * 3]
  local f = redis.call('HMGET', run, 'task_id', 'scheduled_for', 'trigger', 'state', 'duration_ms', 'started_at')
  if f[1] and redis.call('EXISTS', task) == 1 then
    redis.call('HSET', run, 'queued_at', queued_at)
    if f[4] == 'queued' then
      redis.call('ZADD', KEYS[3], 'NX', tonumber(queued_at) + tonumber(ARGV[4]), 'r:' .. run_id)
    end
    local last = redis.call('HGET', task, 'last_run_id')
    local newer = last and last ~= '' and last ~= run_id and
                  tonumber(redis.call('ZSCORE', runs, last) or '0') > tonumber(queued_at)
    redis.call('ZADD', runs, queued_at, run_id)
    if not newer then
      redis.call('HSET', task, 'last_run_id', run_id, 'last_run_state', f[4], 'last_duration_ms', f[5] or '',
                 'last_started_at', f[6] or '')
    end
    local due = redis.call('ZSCORE', KEYS[3], 't:' .. f[1])
    if next_due == '' then
      if not due and redis.call('HGET', task, 'state') ~= 'done' then
        redis.call('HSET', task, 'state', 'done', 'next_run_at', '')
      end
    elseif due and tonumber(due) == tonumber(next_due) then
      redis.call('HSET', task, 'next_run_at', next_due)
    end
    local lag = (tonumber(queued_at) - (tonumber(f[2]) or tonumber(queued_at))) * 1000
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], '*', 'event', cjson.encode({
      type = 'run.queued', task_id = f[1], run_id = run_id, ts = tonumber(queued_at), trigger = f[3],
      lag_ms = math.floor(math.max(0, lag) * 1000 + 0.5) / 1000}))
    local excess = redis.call('ZCARD', runs) - tonumber(ARGV[3])
    if excess > 0 then redis.call('ZREMRANGEBYRANK', runs, 0, excess - 1) end
  end
end
if done > 0 then redis.call('LTRIM', KEYS[1], done, -1) end
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[3], ARGV[1])
end
return done
"""

# KEYS[1] the batch's staged messages, KEYS[2] its fired runs, KEYS[3] due set, then each run's hash
# ARGV[1] the batch's due member (p:), ARGV[2..] run ids
# Undoes prepared fires that were never published (their scheduler died or lost the lock before their
# due time; their entries came back to be fired anew): each staged run's message and run record go.
# A run whose message was published is no longer staged, so it is never undone. Returns how many went.
DISCARD = """
local gone = 0
for i = 2, #ARGV do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('DEL', KEYS[2 + i])
    gone = gone + 1
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[3], ARGV[1])
end
return gone
"""

# KEYS[1] workers zset, KEYS[2] lives zset, KEYS[3] held hash; ARGV[1] worker node name, ARGV[2] this start's
# life ('' = none), ARGV[3] the ids of the messages it holds, space-separated ('-' = not said: whatever it said
# before goes, and ``CHECK_SENT`` takes it to hold everything).
# Scores the beat by Redis's own clock, under the node's name and under its life (lives a day silent go), and
# records what the life holds.
HEARTBEAT = """
local now = redis.call('TIME')
local at = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZADD', KEYS[1], at, ARGV[1])
if ARGV[2] ~= '' then
  redis.call('ZADD', KEYS[2], at, ARGV[2])
  if ARGV[3] == '-' then redis.call('HDEL', KEYS[3], ARGV[2]) else redis.call('HSET', KEYS[3], ARGV[2], ARGV[3]) end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', at - 86400)
end
return 1
"""

# KEYS[1] held hash, KEYS[2] lives zset, KEYS[3] due set; ARGV[1] seconds of silence after which a worker is
# dead, ARGV[2] the due time to give (the scheduler's clock), ARGV[3] a run's due member without its id (r:)
# A worker that fell silent may have prefetched messages it never started: brings their runs' send guards
# (those that still exist: a started run has none) due at ARGV[2], so ``CHECK_SENT`` looks at them now rather
# than a lease after they were sent, and forgets what the silent life held. Returns the ids of those runs.
HASTEN_HELD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local entries = redis.call('HGETALL', KEYS[1])
local moved = {}
for i = 1, #entries, 2 do
  local beat = redis.call('ZSCORE', KEYS[2], entries[i])
  if not beat or now - tonumber(beat) >= tonumber(ARGV[1]) then
    for id in string.gmatch(entries[i + 1], '%S+') do
      if redis.call('ZADD', KEYS[3], 'XX', 'CH', ARGV[2], ARGV[3] .. id) == 1 then moved[#moved + 1] = id end
    end
    redis.call('HDEL', KEYS[1], entries[i])
  end
end
return moved
"""

# KEYS[1] kombu's unacked hash; ARGV[1] the most entries to look at
# Counts the messages delivered to workers and not yet acknowledged by the queue they came from. Each
# value is kombu's JSON ``[message, exchange, routing_key]``; only its tail is read (a message may be
# large). Returns a flat list queue, count, ...; or {-1} when the hash holds more than ARGV[1] entries.
UNACKED_BY_QUEUE = """
if redis.call('HLEN', KEYS[1]) > tonumber(ARGV[1]) then return {-1} end
local counts = {}
for _, value in ipairs(redis.call('HVALS', KEYS[1])) do
  local queue = string.match(string.sub(value, -300), ',%s*"([^"]*)"%s*%]%s*$') or '?'
  counts[queue] = (counts[queue] or 0) + 1
end
local flat = {}
for queue, count in pairs(counts) do
  flat[#flat + 1] = queue
  flat[#flat + 1] = count
end
return flat
"""

# KEYS[1] lock key; ARGV[1] owner token, ARGV[2] ttl in milliseconds
# Takes the lock if free, or extends it if this owner holds it. Returns 1 when held by us.
LOCK = """
local owner = redis.call('GET', KEYS[1])
if owner == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] lock key; ARGV[1] owner token. Deletes the lock only if this owner still holds it.
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] run hash, KEYS[2] metrics hash
# ARGV[1] the state a finish just moved the run to, ARGV[2] the finished_at it wrote,
# ARGV[3] JSON {"int": {field: n}, "float": {field: x}} of counter increments.
# Queued right after that finish's TRANSITION in the same MULTI: the run holds exactly this state and
# finished_at only if the transition happened, so a finish that lost to a stop is never counted.
COUNT_FINISHED = """
if redis.call('HGET', KEYS[1], 'state') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'finished_at') ~= ARGV[2] then
  return 0
end
local incr = cjson.decode(ARGV[3])
for k, v in pairs(incr['int'] or {}) do redis.call('HINCRBY', KEYS[2], k, v) end
for k, v in pairs(incr['float'] or {}) do redis.call('HINCRBYFLOAT', KEYS[2], k, tostring(v)) end
return 1
"""

# KEYS[1] tokens, KEYS[2] tokens:by-hash, KEYS[3] audit stream, KEYS[4] tokens:used
# ARGV[1] name, ARGV[2] record JSON, ARGV[3] sha256 of the secret, ARGV[4] {name, role} JSON,
# ARGV[5] audit retention in seconds, ARGV[6..] audit entry field, value pairs.
# Returns 1 if the token was stored (and audited), 0 if the name is taken.
TOKEN_CREATE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('XADD', KEYS[3], 'MINID', '~', string.format('%d', math.max(0, redis.call('TIME')[1] - ARGV[5]) * 1000),
           '*', unpack(ARGV, 6))
return 1
"""

# KEYS[1] tokens, KEYS[2] tokens:by-hash, KEYS[3] tokens:used, KEYS[4] audit stream
# ARGV[1] name, ARGV[2] audit retention in seconds, ARGV[3..] audit entry field, value pairs.
# Returns the revoked token's record JSON, or false if there is no token of that name.
TOKEN_REVOKE = """
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then return false end
redis.call('HDEL', KEYS[2], cjson.decode(record)['sha256'])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('XADD', KEYS[4], 'MINID', '~', string.format('%d', math.max(0, redis.call('TIME')[1] - ARGV[2]) * 1000),
           '*', unpack(ARGV, 3))
return record
"""

# KEYS[1] audit stream
# ARGV[1] audit retention in seconds, ARGV[2..] audit entry field, value pairs.
# Appends the entry and drops entries older than the retention window, by Redis's own clock (the one
# that stamps entry ids). Never trims by length: a burst of changes cannot push out a young entry.
AUDIT_ADD = """
local cutoff = math.max(0, redis.call('TIME')[1] - ARGV[1]) * 1000
return redis.call('XADD', KEYS[1], 'MINID', '~', string.format('%d', cutoff), '*', unpack(ARGV, 2))
"""

# KEYS: task hashes. Returns a JSON array with each one's fields as a flat array (empty for a missing one):
# a page of tasks, or a burst's thousand definitions, cost the client one string to decode, not a reply per field.
READ_HASHES = """
local found = {}
for i = 1, #KEYS do
  local fields = redis.call('HGETALL', KEYS[i])
  if #fields == 0 then found[i] = cjson.decode('[]') else found[i] = fields end
end
return cjson.encode(found)
"""

# KEYS[1] audit stream; ARGV[1] audit retention in seconds, ARGV[2] a JSON array of commands, each an array
# of a Redis command's name and arguments, or ["AUDIT", field, value, ...] for an audit entry (appended as
# ``AUDIT_ADD`` does, trimmed once per call), or ["LPUSH*", key, first, count] to push ARGV[first] ..
# ARGV[first + count - 1] (large values, such as Celery messages, passed as they are rather than inside
# the JSON); ARGV[3..] those values.
# Runs a batch of writes (``Store.batch``) as one command: a bulk submit's thousands of writes cost the
# client one JSON document instead of tens of thousands of encoded arguments, and happen at once.
BATCH = """
local commands = cjson.decode(ARGV[2])
local audited = false
for i = 1, #commands do
  local command = commands[i]
  if command[1] == 'AUDIT' then
    command[1] = '*'
    redis.call('XADD', KEYS[1], unpack(command))
    audited = true
  elseif command[1] == 'LPUSH*' then
    local last = command[3] + command[4] - 1
    for first = command[3], last, 1000 do
      redis.call('LPUSH', command[2], unpack(ARGV, first, math.min(first + 999, last)))
    end
  else
    redis.call(unpack(command))
  end
end
if audited then
  local cutoff = math.max(0, redis.call('TIME')[1] - ARGV[1]) * 1000
  redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d', cutoff))
end
return #commands
"""

# KEYS[1] the token's allowance hash, KEYS[2] audit stream
# ARGV[1] changes allowed per minute (also the burst: a full allowance is a minute's worth),
# ARGV[2] changes this call makes, ARGV[3] most audit entries held, ARGV[4] audit retention in seconds.
# A token bucket refilled continuously by Redis's clock. A call is let through when the allowance holds
# its cost (or, for a batch bigger than a minute's worth, when it is full); the allowance may then go
# below zero, which later calls wait out, so no token averages more than the rate.
# Returns {0, 0} let through, {1, ms to wait} over the rate, {2, entries held} the audit stream is full.
TAKE_ALLOWANCE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local capacity = tonumber(ARGV[1])
local per_second = capacity / 60
local cost = tonumber(ARGV[2])
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(saved[1]) or capacity
local at = tonumber(saved[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * per_second)
local needed = math.min(cost, capacity)
if tokens < needed then
  return {1, math.ceil((needed - tokens) / per_second * 1000)}
end
redis.call('XTRIM', KEYS[2], 'MINID', '~', string.format('%d', math.max(0, clock[1] - ARGV[4]) * 1000))
local held = redis.call('XLEN', KEYS[2])
if held + cost > tonumber(ARGV[3]) then
  return {2, held}
end
tokens = tokens - cost
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / per_second * 1000) + 1000)
return {0, 0}
"""


def _encode(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


class Store:
    """Reads and writes taskman's records; write methods that go together accept a pipeline."""

    @classmethod
    def from_settings(cls, settings, url: str) -> Store:
        """A store on the Redis at ``url`` with the caps and retention ``settings`` name."""
        return cls(connect(url), settings.namespace, events_maxlen=settings.events_maxlen,
                   logs_maxlen=settings.logs_maxlen, history_per_task=settings.history_per_task,
                   run_ttl=settings.run_ttl_days * 86400,
                   audit_maxlen=settings.audit_maxlen, audit_retention=settings.audit_retention_days * 86400)

    def __init__(self, client: redis.Redis, namespace: str, *, events_maxlen: int = 10_000,
                 logs_maxlen: int = 50_000, history_per_task: int = 200, run_ttl: float = 14 * 86400,
                 audit_maxlen: int = 10_000_000, audit_retention: float = 90 * 86400) -> None:
        self.redis = client
        self.keys = Keys(namespace)
        self.events_maxlen = events_maxlen
        self.logs_maxlen = logs_maxlen
        self.history_per_task = history_per_task
        self.run_ttl = int(run_ttl)
        self.audit_maxlen = audit_maxlen
        self.audit_retention = max(1, int(audit_retention))
        self._transition = client.register_script(TRANSITION)
        self._requeue = client.register_script(REQUEUE)
        self._check_sent = client.register_script(CHECK_SENT)
        self._hasten_held = client.register_script(HASTEN_HELD)
        self._epoch = client.register_script(EPOCH)
        self._fire = client.register_script(FIRE)
        self._claim = client.register_script(CLAIM)
        self._publish = client.register_script(PUBLISH)
        self._commit = client.register_script(COMMIT)
        self._discard = client.register_script(DISCARD)
        self._hand_back = client.register_script(HAND_BACK)
        self._take_back = client.register_script(TAKE_BACK)
        self._batch = client.register_script(BATCH)
        self._read_hashes = client.register_script(READ_HASHES)
        self._queues: dict[str, int] = {}
        """Queue name → its index among ``PUBLISH``'s queue keys (every queue seen so far is passed)."""
        self._lock = client.register_script(LOCK)
        self._unlock = client.register_script(UNLOCK)
        self._token_create = client.register_script(TOKEN_CREATE)
        self._token_revoke = client.register_script(TOKEN_REVOKE)
        self._take_allowance = client.register_script(TAKE_ALLOWANCE)
        self._unacked_by_queue = client.register_script(UNACKED_BY_QUEUE)

    # -- tasks ---------------------------------------------------------------------------------

    def add_task(self, task: Task, pipe: redis.client.Pipeline | Batch) -> None:
        """Queue the writes that store a new task definition."""
        pipe.hset(self.keys.task(task.id), mapping=self._task_fields(task))  # type: ignore[arg-type]
        pipe.zadd(self.keys.tasks, {task.id: task.created_at})

    def add_task_with_run(self, task: Task, run: Run, pipe: redis.client.Pipeline | Batch) -> None:
        """Queue the writes that store a new task with its first run (an immediate task), as :meth:`add_task`
        and :meth:`add_run` would, in fewer: the task's hash is written once, with its latest run."""
        fields = self._task_fields(task) | {"last_run_id": run.id, "last_run_state": run.state.value,
                                            "last_duration_ms": ""}
        pipe.hset(self.keys.task(task.id), mapping=fields)  # type: ignore[arg-type]
        pipe.zadd(self.keys.tasks, {task.id: task.created_at})
        pipe.hset(self.keys.run(run.id), mapping=self.run_fields(run))  # type: ignore[arg-type]
        pipe.zadd(self.keys.task_runs(task.id), {run.id: run.queued_at or time.time()})

    def save_task(self, task: Task, pipe: redis.client.Pipeline) -> None:
        """Queue the writes that replace a task's definition and schedule fields."""
        pipe.hset(self.keys.task(task.id), mapping=self._task_fields(task))  # type: ignore[arg-type]

    def set_task_state(self, task_id: str, state: TaskState, next_run_at: float | None,
                       pipe: redis.client.Pipeline) -> None:
        pipe.hset(self.keys.task(task_id), mapping={"state": state.value, "next_run_at": _encode(next_run_at),
                                                     "updated_at": repr(time.time())})

    @staticmethod
    def _task_fields(task: Task) -> dict[str, str]:
        return {
            "id": task.id,
            "spec": json.dumps(task.stored_spec),
            "state": task.state.value,
            "created_at": repr(task.created_at),
            "updated_at": repr(task.updated_at),
            "next_run_at": _encode(task.next_run_at),
        }

    def remove_task(self, task_id: str, pipe: redis.client.Pipeline) -> None:
        """Queue removal of a definition and its schedule; its run history expires with the runs."""
        pipe.delete(self.keys.task(task_id))
        pipe.zrem(self.keys.tasks, task_id)
        pipe.zrem(self.keys.due, due_member_for_task(task_id))
        pipe.expire(self.keys.task_runs(task_id), self.run_ttl)
        pipe.delete(self.keys.task_outcomes(task_id))

    def get_task(self, task_id: str) -> Task | None:
        return self._task_from(cast(dict[str, str], self.redis.hgetall(self.keys.task(task_id))))

    def get_tasks(self, task_ids: Iterable[str]) -> list[Task]:
        """The tasks with these ids that exist, in order: their hashes come back as one JSON string per 1,000
        (``READ_HASHES``), which costs this process a third less than a reply per hash."""
        ids = list(task_ids)
        tasks: list[Task] = []
        for start in range(0, len(ids), 1000):
            keys = [self.keys.task(task_id) for task_id in ids[start:start + 1000]]
            for flat in json.loads(self._read_hashes(keys=keys)):
                task = self._task_from(dict(zip(flat[::2], flat[1::2], strict=True))) if flat else None
                if task is not None:
                    tasks.append(task)
        return tasks

    def task_ids(self, start: int = 0, stop: int = -1) -> list[str]:
        """Task ids, newest first."""
        return cast(list[str], self.redis.zrevrange(self.keys.tasks, start, stop))

    def count_tasks(self) -> int:
        return self.redis.zcard(self.keys.tasks)

    @staticmethod
    def _task_from(fields: dict[str, str]) -> Task | None:
        if not fields or "spec" not in fields:
            return None
        return Task(
            id=fields["id"],
            stored_spec=json.loads(fields["spec"]),
            state=TaskState(fields["state"]),
            created_at=float(fields["created_at"]),
            updated_at=float(fields["updated_at"]),
            next_run_at=_float(fields.get("next_run_at")),
            last_run_id=fields.get("last_run_id") or None,
            last_run_state=fields.get("last_run_state") or None,
            last_duration_ms=_float(fields.get("last_duration_ms")),
            # stored when a run ends; a run queued since (its summary says so) has not started yet
            last_started_at=_float(fields.get("last_started_at")) if fields.get("last_run_state") != "queued" else None,
            recent_runs=int(fields.get("recent_runs") or 0),
            recent_ok=int(fields.get("recent_ok") or 0),
            recent_p95_ms=_float(fields.get("recent_p95_ms")),
        )

    # -- runs ----------------------------------------------------------------------------------

    @staticmethod
    def run_fields(run: Run) -> dict[str, str]:
        """A run as the flat string mapping stored in its hash."""
        fields = {key: _encode(value) for key, value in run.to_dict().items()
                  if key not in RUN_FIELDS_JSON and key not in RUN_FIELDS_FLOAT}
        for key in RUN_FIELDS_FLOAT:
            fields[key] = _encode(getattr(run, key))
        fields["result"] = json.dumps(run.result)
        fields["overrides"] = json.dumps(run.overrides) if run.overrides else ""  # unmasked: the worker needs them
        return fields

    def add_run(self, run: Run, pipe: redis.client.Pipeline | Batch) -> None:
        """Queue the writes that record a new run and link it to its task."""
        pipe.hset(self.keys.run(run.id), mapping=self.run_fields(run))  # type: ignore[arg-type]
        pipe.zadd(self.keys.task_runs(run.task_id), {run.id: run.queued_at or time.time()})
        pipe.hset(self.keys.task(run.task_id), mapping={"last_run_id": run.id, "last_run_state": run.state.value,
                                                        "last_duration_ms": ""})
        pipe.zremrangebyrank(self.keys.task_runs(run.task_id), 0, -self.history_per_task - 1)

    def push_message(self, run_id: str, queue: str, message: str, fence: int,
                     pipe: redis.client.Pipeline | Batch) -> None:
        """Queue the push of a run's Celery message (``core.dispatch.Dispatcher.message``) onto its queue's list,
        with the record of the fence and queue it was sent with (as ``MARK_SENT``), in the caller's
        transaction: the run and its message are then written at once."""
        pipe.lpush(self.keys.celery_queue(queue), message)
        pipe.hset(self.keys.run(run_id), mapping={"sent_fence": str(int(fence)), "sent_queue": queue})

    def get_run(self, run_id: str) -> Run | None:
        return self._run_from(cast(dict[str, str], self.redis.hgetall(self.keys.run(run_id))))

    def recent_runs(self, task_id: str, limit: int = 20) -> list[Run]:
        """The task's runs, newest first."""
        if limit <= 0:
            return []
        run_ids = cast(list[str], self.redis.zrevrange(self.keys.task_runs(task_id), 0, limit - 1))
        pipe = self.redis.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hgetall(self.keys.run(run_id))
        return [run for run in map(self._run_from, pipe.execute()) if run is not None]

    def open_runs(self, task_id: str, scan: int = 50) -> list[Run]:
        """The task's runs that are queued or running (among its latest ``scan``)."""
        return [run for run in self.recent_runs(task_id, scan) if not run.state.final]

    @staticmethod
    def _run_from(fields: dict[str, str]) -> Run | None:
        if not fields or "state" not in fields:
            return None
        return Run(
            id=fields["id"],
            task_id=fields["task_id"],
            state=RunState(fields["state"]),
            attempt=int(fields.get("attempt") or 1),
            max_attempts=int(fields.get("max_attempts") or 1),
            trigger=fields.get("trigger") or "now",
            queued_at=_float(fields.get("queued_at")),
            scheduled_for=_float(fields.get("scheduled_for")),
            started_at=_float(fields.get("started_at")),
            finished_at=_float(fields.get("finished_at")),
            duration_ms=_float(fields.get("duration_ms")),
            result=json.loads(fields["result"]) if fields.get("result") else None,
            error=fields.get("error") or None,
            traceback=fields.get("traceback") or None,
            output=fields.get("output") or "",
            worker=fields.get("worker") or None,
            series=fields.get("series") or None,
            overrides=json.loads(fields["overrides"]) if fields.get("overrides") else None,
        )

    def transition(self, run_id: str, allowed: Iterable[RunState], new: RunState, *,
                   event: dict | None = None, fields: dict[str, Any] | None = None,
                   pipe: redis.client.Pipeline | None = None, fence: int | None = None,
                   running: str = "", log: dict[str, Any] | None = None) -> str | None:
        """Move a run to ``new`` only if it is in one of ``allowed`` (and, given ``fence``, still under that
        fence); returns the previous state or None. ``running`` is ``"add"``/``"rem"`` to enter or leave
        the dead-worker watch with the transition. ``log``: a log line (``core.runner.log_entry``) written
        with it; with ``"fresh": True`` in it, only if the run was not running already, and ``{attempt}``
        and ``{max_attempts}`` in its message become the run's.

        With ``pipe`` the script is queued (as EVAL: a registered script in a pipeline costs redis-py
        an extra SCRIPT EXISTS round trip) and its answer comes back from ``pipe.execute()``.
        """
        argv: list[str] = [",".join(state.value for state in allowed), new.value,
                           json.dumps(event) if event else "", str(self.events_maxlen),
                           "" if fence is None else str(fence), running, json.dumps(log) if log else "",
                           str(self.logs_maxlen)]
        for key, value in (fields or {}).items():
            argv += [key, json.dumps(value) if key in RUN_FIELDS_JSON else _encode(value)]
        keys = [self.keys.run(run_id), self.keys.events, self.keys.running, self.keys.due, self.keys.logs]
        if pipe is not None:
            pipe.eval(TRANSITION, len(keys), *keys, *argv)
            return None
        return self._transition(keys=keys, args=argv)

    def set_last_run(self, task_id: str, run_id: str, state: RunState, duration_ms: float | None,
                      pipe: redis.client.Pipeline) -> None:
        """Queue the task-side summary of a finished run (if it is still the task's latest run), and count a
        run that succeeded, failed or timed out among the task's recent outcomes (see ``LAST_RUN``)."""
        pipe.eval(LAST_RUN, 3, self.keys.task(task_id), self.keys.run(run_id), self.keys.task_outcomes(task_id),
                  run_id, state.value, _encode(duration_ms), str(RECENT_OUTCOMES))

    def expire_run(self, run_id: str, pipe: redis.client.Pipeline) -> None:
        pipe.expire(self.keys.run(run_id), self.run_ttl)

    # -- scheduling ----------------------------------------------------------------------------

    def set_due(self, member: str, when: float, pipe: redis.client.Pipeline | Batch) -> None:
        pipe.zadd(self.keys.due, {member: when})

    def remove_due(self, *members: str, pipe: redis.client.Pipeline | None = None) -> None:
        if members:
            (pipe or self.redis).zrem(self.keys.due, *members)

    def claim_due(self, now: float, lease: float, token: str, limit: int = 500) -> list[tuple[str, float]]:
        """Atomically lease the due entries whose time has come to the holder of the scheduler lock
        ``token`` (until ``now + lease``); returns (member, due time) pairs, none if the lock is not held."""
        return [(member, due_at) for member, due_at, _ in self.claim_ahead(now, lease, token, limit)]

    def claim_ahead(self, now: float, lease: float, token: str, limit: int = 500, ahead: float = 0.0,
                    hold: float = 0.0, per_fire: float = 0.0) -> list[tuple[str, float, float]]:
        """:meth:`claim_due`, and with ``ahead`` also the tasks' entries due within ``ahead`` seconds (within
        ``hold`` when there are more than ``ahead`` leaves the time to prepare at ``per_fire`` seconds each),
        leased to their due time plus ``hold``; (member, due time, leased score) triples in due order."""
        flat = self._claim(keys=[self.keys.due, self.keys.scheduler_lock],
                           args=[repr(now), repr(lease), limit, token, repr(ahead), repr(hold), repr(per_fire)])
        return [(flat[i], float(flat[i + 1]), float(flat[i + 2])) for i in range(0, len(flat), 3)]

    def stage(self, batch: str, fires: list[Prepared], recover_at: float) -> None:
        """Write the runs of fires prepared ahead of their due time and stage their messages, with the batch's
        ``p:`` entry due at ``recover_at`` (which undoes what is never published), in one transaction. Nothing
        points at the runs yet: they join their tasks' histories when published (``COMMIT``)."""
        pipe = self.batch()
        for fire in fires:  # a field with nothing in it reads as its default: a burst writes half the fields
            fields = {key: value for key, value in self.run_fields(fire.run).items() if value not in ("", "null")}
            fields |= {"sent_fence": "0", "sent_queue": fire.queue}  # so it is, if published (``PUBLISH``)
            pipe.hset(self.keys.run(fire.run.id), mapping=fields)
            self._wire(fire)
            fire.packed = resp_argument(fire.message)
        pipe.hset(self.keys.fire_staged(batch), mapping={fire.run.id: fire.queue for fire in fires})
        pipe.zadd(self.keys.due, {due_member_for_batch(batch): recover_at})
        pipe.execute()

    def publish(self, fires: list[Prepared], now: float, *, token: str, hand_back: bool = False,
                armed: Armed | None = None) -> list[bool]:
        """Publish prepared fires of one batch that are due (see ``PUBLISH``): whether each was published. With
        ``hand_back`` (or if ``token`` no longer holds the lock) their entries go back to their due times.
        ``armed``: their transaction, opened ahead (``arm``) for exactly these fires; it is used up either way."""
        if not fires:
            return []
        try:
            batch = fires[0].batch
            assert all(fire.batch == batch for fire in fires), "one batch per call"
            assert armed is None or (armed.fires == fires and not hand_back and not armed.used), \
                "an armed transaction publishes its fires, once"
            if armed is not None and all(fire.wire is not None and fire.wire[0] == fire.next_due for fire in fires):
                wire = armed.wire
            else:
                wire = self._joined_wire(fires)
            mark = self.keys.fire_mark(batch) if armed is None else armed.mark
            keys = [self.keys.due, self.keys.scheduler_lock, self.keys.fire_staged(batch),
                    self.keys.fire_fired(batch), mark, *(self.keys.celery_queue(queue) for queue in self._queues)]
            args = [token, repr(now), "1" if hand_back else "0", wire, UNPUBLISHED]
        except BaseException:
            if armed is not None:
                self.disarm(armed)
            raise
        if hand_back:
            answer = self._publish(keys=keys, args=args)
        else:
            if armed is not None:
                armed.used = True
            answer = self._push_and_publish(fires, mark, keys, args, armed)
        return [flag == "1" for flag in answer]

    def _joined_wire(self, fires: list[Prepared]) -> str:
        """``PUBLISH``'s ARGV[4] for ``fires``: six JSON arrays, one value per fire in each (after the first,
        the one value itself if every fire has it)."""
        columns = list(zip(*(self._wire(fire) for fire in fires), strict=True))
        return "[" + ",".join(column[0] if index and len(set(column)) == 1 else "[" + ",".join(column) + "]"
                              for index, column in enumerate(columns)) + "]"

    def arm(self, fires: list[Prepared]) -> Armed:
        """Open the transaction that will publish ``fires`` (one batch, due together) on a connection of its own:
        MULTI, the mark, an LPUSH per queue of their messages; nothing runs until ``publish`` sends the rest.
        Should the connection break meanwhile, Redis drops it all and ``publish`` raises."""
        mark = self.keys.fire_mark(fires[0].batch)
        pool = self.redis.connection_pool
        connection = pool.get_connection()
        try:
            parts, owed = self._pushes(fires, mark)
            armed = Armed(fires, connection, mark, owed, self._joined_wire(fires))
            connection.send_packed_command([b"".join(parts)], check_health=False)
        except BaseException:
            connection.disconnect()
            pool.release(connection)
            raise
        for fire in fires:
            fire.armed = True
        return armed

    def disarm(self, armed: Armed) -> None:
        """Drop a transaction opened ahead, unless already used: closing its connection makes Redis forget it;
        its fires are then published the plain way."""
        if armed.used:
            return
        armed.used = True
        for fire in armed.fires:
            fire.armed = False
        armed.connection.disconnect()
        self.redis.connection_pool.release(armed.connection)

    def _pushes(self, fires: list[Prepared], mark: str) -> tuple[list[bytes], int]:
        """MULTI, the mark and an LPUSH per queue of the fires' messages, in their order, as Redis commands (joined
        from each message packed ahead, ``Store.stage``: redis-py takes a millisecond per 1,000 to pack them);
        and how many replies they earn."""
        pushes: dict[str, list[bytes]] = {}
        for fire in fires:
            pushes.setdefault(fire.queue, []).append(fire.packed or resp_argument(fire.message))
        key = mark.encode()
        parts = [b"*1\r\n$5\r\nMULTI\r\n*5\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$1\r\n1\r\n$2\r\nPX\r\n$6\r\n600000\r\n"
                 % (len(key), key)]  # (it lasts ten minutes should its script never run)
        for queue, messages in pushes.items():
            key = self.keys.celery_queue(queue).encode()
            parts.append(b"*%d\r\n$5\r\nLPUSH\r\n$%d\r\n%s\r\n" % (len(messages) + 2, len(key), key))
            parts.extend(messages)
        return parts, 2 + len(pushes)

    def _push_and_publish(self, fires: list[Prepared], mark: str, keys: list[str], args: list[str],
                          armed: Armed | None) -> str:
        """One transaction: MULTI, the mark, an LPUSH per queue of the fires' messages (sent ahead if ``armed``),
        then ``PUBLISH``, which keeps the messages of the fires that happen and takes back the rest, and EXEC.
        ``PUBLISH`` goes as EVAL, so a script cache flushed meanwhile cannot leave the pushes alone."""
        pool = self.redis.connection_pool
        if armed is None:
            parts, owed = self._pushes(fires, mark)
            connection = pool.get_connection()
        else:
            connection, parts, owed = armed.connection, [], armed.owed
        try:
            if armed is not None and connection._sock is None:
                # closed meanwhile (its pool was reset): sent now, redis-py would reconnect and run the script
                # and EXEC outside any transaction, the pushes never made
                raise redis.ConnectionError("the transaction opened ahead was closed before its fires fell due")
            parts.extend(connection.pack_command("EVAL", PUBLISH, len(keys), *keys, *args))
            parts.append(b"*1\r\n$4\r\nEXEC\r\n")
            connection.send_packed_command([b"".join(parts)], check_health=False)  # one send: not a part at a time
            for _ in range(owed + 1):  # MULTI's OK, then each command's QUEUED
                connection.read_response()
            answers = connection.read_response()
        except BaseException:
            connection.disconnect()  # what it still has to read belongs to no one; an open MULTI is dropped
            for fire in fires:
                fire.armed = False  # tried again, it goes the plain way
            raise
        finally:
            pool.release(connection)
        flags = answers[-1]
        if isinstance(flags, Exception):
            # The script failed. If before it began (its mark stands), the pushes stand without their bookkeeping:
            # take them back. Otherwise (a fault in the script itself) leave what it did: its batch's entry
            # recovers the fires it left.
            queues = [self.keys.celery_queue(fire.queue) for fire in fires]
            if not self._take_back(keys=[mark, *queues], args=[fire.message for fire in fires]):
                flags.add_note(f"PUBLISH failed partway through batch {fires[0].batch}; its entry recovers the rest")
            raise flags
        return cast(str, flags)

    def _wire(self, fire: Prepared) -> tuple[str, ...]:
        """A prepared fire's six values as ``PUBLISH`` reads them, in JSON (made once: a burst's due instant only
        joins them)."""
        if fire.wire is None or fire.wire[0] != fire.next_due:
            index = self._queues.setdefault(fire.queue, len(self._queues) + 1)
            values = (fire.member, fire.leased_to, fire.due_at, fire.run.id, index,
                      "" if fire.next_due is None else repr(fire.next_due))
            fire.wire = (fire.next_due, tuple(json.dumps(value) for value in values))
        return fire.wire[1]

    def hand_back(self, member: str, due_at: float, leased_to: float) -> bool:
        """Give a claimed entry back at ``due_at`` if it still holds the lease to ``leased_to``."""
        return bool(self._hand_back(keys=[self.keys.due], args=[member, repr(leased_to), repr(due_at)]))

    def commit(self, batch: str, runs: list[tuple[str, str]], lease: float) -> int:
        """Record published fires of ``batch`` (``COMMIT``), each with its send guard due ``lease`` seconds after
        it was queued; ``runs``: (run id, task id) pairs, in the order they were published. How many were
        (those before the first that is not next in the fired list)."""
        keys = [self.keys.fire_fired(batch), self.keys.fire_staged(batch), self.keys.due, self.keys.events]
        for run_id, task_id in runs:
            keys += [self.keys.run(run_id), self.keys.task(task_id), self.keys.task_runs(task_id)]
        return int(self._commit(keys=keys, args=[due_member_for_batch(batch), str(self.events_maxlen),
                                                 str(self.history_per_task), repr(lease),
                                                 *(run_id for run_id, _ in runs)]))

    def finish_batch(self, batch: str, lease: float, chunk: int = 250) -> tuple[int, int]:
        """Whatever a batch of prepared fires left (its ``p:`` entry came up: its scheduler died or lost the
        lock): commit its published fires, undo the ones never published. (committed, undone)."""
        entries = cast(list[str], self.redis.lrange(self.keys.fire_fired(batch), 0, -1))
        fired = [entry.split(" ", 1)[0] for entry in entries]
        staged = cast(list[str], self.redis.hkeys(self.keys.fire_staged(batch)))
        committed = undone = 0
        for start in range(0, len(fired), chunk):
            ids = fired[start:start + chunk]
            pipe = self.redis.pipeline(transaction=False)
            for run_id in ids:
                pipe.hget(self.keys.run(run_id), "task_id")
            owners = pipe.execute()
            committed += self.commit(batch, [(run_id, task_id or "-") for run_id, task_id in zip(ids, owners,
                                                                                                  strict=True)],
                                     lease)
        for start in range(0, max(1, len(staged)), chunk):
            ids = staged[start:start + chunk]
            undone += int(self._discard(
                keys=[self.keys.fire_staged(batch), self.keys.fire_fired(batch), self.keys.due,
                      *(self.keys.run(run_id) for run_id in ids)],
                args=[due_member_for_batch(batch), *ids]))
        return committed, undone

    def next_due(self) -> float | None:
        first = cast(list[tuple[str, float]], self.redis.zrange(self.keys.due, 0, 0, withscores=True))
        return first[0][1] if first else None

    def due_count(self) -> int:
        return self.redis.zcard(self.keys.due)

    def due_score(self, member: str) -> float | None:
        return self.redis.zscore(self.keys.due, member)

    def fire(self, task: Task, run: Run, next_due: float | None, now: float, event: dict, *, token: str,
             leased_to: float, due_at: float, send_guard_at: float) -> bool:
        """Atomically record a fired run and move (or drop) the task's due entry. False if nothing fired:
        the entry no longer holds the claim that leased it to ``leased_to``, the lock ``token`` was lost
        (the entry is handed back at ``due_at``), or the task is not active.

        The run's own due entry (its send guard) is set for ``send_guard_at`` in the same script: unless the
        run has started by then, the scheduler looks at it again at that time (``CHECK_SENT``).
        """
        keys, args = self._fire_call(Fire(task, run, next_due, event, leased_to, due_at, send_guard_at), now, token)
        return bool(self._fire(keys=keys, args=args))

    def fire_many(self, fires: list[Fire], now: float, *, token: str) -> list[bool | Exception]:
        """:meth:`fire` for each of ``fires``, in one round trip (each is still its own atomic script);
        one answer per fire, in order: whether it created its run, or the error its script raised."""
        if not fires:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for fire in fires:
            keys, args = self._fire_call(fire, now, token)
            self._fire(keys=keys, args=args, client=pipe)
        answers = pipe.execute(raise_on_error=False)
        return [answer if isinstance(answer, Exception) else bool(answer) for answer in answers]

    def _fire_call(self, fire: Fire, now: float, token: str) -> tuple[list[str], list[str]]:
        """KEYS and ARGV of the ``FIRE`` script for one fire."""
        task, run = fire.task, fire.run
        keys = [self.keys.task(task.id), self.keys.due, self.keys.run(run.id), self.keys.task_runs(task.id),
                self.keys.events, self.keys.scheduler_lock]
        args = [due_member_for_task(task.id), "" if fire.next_due is None else repr(fire.next_due),
                json.dumps(self.run_fields(run)), repr(now), json.dumps(fire.event), str(self.events_maxlen),
                str(self.history_per_task), due_member_for_run(run.id), repr(fire.send_guard_at), token,
                repr(fire.leased_to), repr(fire.due_at)]
        return keys, args

    def add_retry(self, failed_run_id: str, retry: Run, due_at: float, event: dict,
                  pipe: redis.client.Pipeline) -> None:
        """Queue the creation of ``retry`` (and its due entry) for when ``failed_run_id`` is ``retrying``."""
        pipe.eval(RETRY, 6, self.keys.run(failed_run_id), self.keys.run(retry.id), self.keys.task_runs(retry.task_id),
                  self.keys.task(retry.task_id), self.keys.due, self.keys.events,
                  json.dumps(self.run_fields(retry)), due_member_for_run(retry.id), repr(due_at), json.dumps(event),
                  str(self.events_maxlen), str(self.history_per_task))

    def check_epoch(self, seen: str | None) -> tuple[str, str]:
        """(this Redis's epoch, verdict): 'new', 'same', or 'lost' if ``seen`` vanished (recorded in Redis)."""
        epoch, verdict = self._epoch(keys=[self.keys.epoch, self.keys.data_lost],
                                     args=[seen or "", uuid.uuid4().hex, repr(time.time())])
        return epoch, verdict

    def data_loss(self) -> dict | None:
        """When the scheduler found that Redis had lost its data (and the epochs before and after), if ever."""
        raw = self.redis.get(self.keys.data_lost)
        return json.loads(raw) if raw else None

    def acquire_lock(self, token: str, ttl: float) -> bool:
        return bool(self._lock(keys=[self.keys.scheduler_lock], args=[token, int(ttl * 1000)]))

    def release_lock(self, token: str) -> None:
        self._unlock(keys=[self.keys.scheduler_lock], args=[token])

    def free_lock_of(self, pid: int) -> bool:
        """Free the scheduler lock if process ``pid`` of this host holds it (``lock_token``): its supervisor saw
        it exit, so the next scheduler leads at once rather than after the lock's TTL. Whether it did."""
        token = cast(str | None, self.redis.get(self.keys.scheduler_lock))
        if token is None or token.partition(".")[2] != f"{pid}@{socket.gethostname()}":
            return False
        return bool(self._unlock(keys=[self.keys.scheduler_lock], args=[token]))

    # -- streams -------------------------------------------------------------------------------

    def add_event(self, event: dict, pipe: redis.client.Pipeline | Batch | None = None) -> None:
        (pipe or self.redis).xadd(self.keys.events, {"event": json.dumps(event)},
                                  maxlen=self.events_maxlen, approximate=True)

    def add_logs(self, entries: Iterable[dict[str, str]], pipe: redis.client.Pipeline | None = None) -> None:
        target = pipe or self.redis.pipeline(transaction=False)
        for entry in entries:
            target.xadd(self.keys.logs, entry, maxlen=self.logs_maxlen, approximate=True)  # type: ignore[arg-type]
        if pipe is None:
            target.execute()

    def read_stream(self, stream: str, last_id: str, block_ms: int | None, count: int = 500) -> list[Entry]:
        """Entries after ``last_id`` of ``events`` or ``logs``; waits up to ``block_ms`` for new ones."""
        key = {"events": self.keys.events, "logs": self.keys.logs, "audit": self.keys.audit}[stream]
        answer = cast(list[tuple[str, list[Entry]]], self.redis.xread({key: last_id}, count=count, block=block_ms))
        return answer[0][1] if answer else []

    def stream_tail(self, stream: str, count: int) -> list[Entry]:
        key = {"events": self.keys.events, "logs": self.keys.logs, "audit": self.keys.audit}[stream]
        return list(reversed(cast(list[Entry], self.redis.xrevrange(key, count=count))))

    def stream_range(self, stream: str, first: str, last: str, count: int) -> list[Entry]:
        """Up to ``count`` entries of ``stream`` from id ``first`` to id ``last`` (both included), oldest first."""
        key = {"events": self.keys.events, "logs": self.keys.logs, "audit": self.keys.audit}[stream]
        return cast(list[Entry], self.redis.xrange(key, min=first, max=last, count=count))

    # -- workers -------------------------------------------------------------------------------

    def record_registered(self, names: Iterable[str], worker: str, queues: Iterable[str],
                          isolation: dict | None = None) -> None:
        """Remember the task names ``worker`` registered, the queues it serves and the isolation walls its
        code runs get (one field per worker, so workers that start together never overwrite each other)."""
        detail = {"tasks": sorted(names), "queues": sorted(queues), "seen_at": time.time(), "isolation": isolation}
        self.redis.hset(self.keys.registered, worker, json.dumps(detail))

    def registered(self) -> dict[str, dict]:
        """Registered task name → the workers that may run it and the queues they serve that such a task may be
        sent to: taskman's own ``code`` and ``http`` queues never carry one (``core.spec``), so a worker serving
        only those, though it registers every task its app knows, runs none and is not named."""
        names: dict[str, dict] = {}
        for worker, raw in sorted(cast(dict[str, str], self.redis.hgetall(self.keys.registered)).items()):
            detail = json.loads(raw)
            sendable = set(detail.get("queues", ())) - {CODE_QUEUE, HTTP_QUEUE}
            if not sendable:
                continue
            for name in detail.get("tasks", ()):
                entry = names.setdefault(name, {"workers": [], "queues": []})
                entry["workers"].append(worker)
                entry["queues"] = sorted(set(entry["queues"]) | sendable)
        return dict(sorted(names.items()))

    def worker_reports(self) -> dict[str, dict]:
        """Each worker's last report: task names, queues, when, and the isolation walls of its code runs."""
        reports = cast(dict[str, str], self.redis.hgetall(self.keys.registered))
        return {worker: json.loads(raw) for worker, raw in sorted(reports.items())}

    def running_runs(self) -> list[tuple[str, float]]:
        """(run id, when it started by Redis's clock) of every run in the dead-worker watch."""
        return cast(list[tuple[str, float]], self.redis.zrange(self.keys.running, 0, -1, withscores=True))

    def run_owner(self, run_id: str) -> tuple[str, str, int]:
        """(state, worker node, fence) of a run, as the dead-worker watch needs them."""
        return self.run_owners([run_id])[0]

    def run_owners(self, run_ids: list[str]) -> list[tuple[str, str, int]]:
        """:meth:`run_owner` of many runs, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hmget(self.keys.run(run_id), "state", "node", "fence")
        answers = cast(list[list[str | None]], pipe.execute())
        return [(state or "", node or "", int(fence or 0)) for state, node, fence in answers]

    def heartbeats(self) -> dict[str, float]:
        """Worker node name → time of its last heartbeat."""
        return dict(cast(list[tuple[str, float]], self.redis.zrange(self.keys.workers, 0, -1, withscores=True)))

    def signs_of_life(self) -> dict[str, float]:
        """Worker node name and worker life (``node#id``, one per start of a worker) → time of its last
        heartbeat, in one round trip (the dead-worker watch matches a run's recorded owner against both)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrange(self.keys.workers, 0, -1, withscores=True)
        pipe.zrange(self.keys.worker_lives, 0, -1, withscores=True)
        nodes, lives = pipe.execute()
        return {**dict(nodes), **dict(lives)}

    def check_sent(self, run_ids: list[str], token: str, most_unacked: int = 2000, *, listed_after: float = 1.0,
                   dead_after: float = 30.0, held_by_dead: frozenset[str] = frozenset()) -> list[tuple[str, int]]:
        """What to do with queued runs whose send guards came up (see ``CHECK_SENT``), in two round trips:
        (verdict, new fence) per run, in order. ``listed_after``: seconds after a message's delivery from which
        a heartbeat of the worker holding it lists it (the hosts' clocks may differ by that much);
        ``dead_after``: seconds of silence after which a worker is dead; ``held_by_dead``: runs a dead worker
        held (``hasten_held``), looked for in kombu's unacked hash even behind a backlog."""
        if not run_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hget(self.keys.run(run_id), "sent_queue")
        queues = cast(list[str | None], pipe.execute())
        pipe = self.redis.pipeline(transaction=False)
        for run_id, queue in zip(run_ids, queues, strict=True):
            self._check_sent(keys=[self.keys.run(run_id), self.keys.scheduler_lock, self.keys.due,
                                   self.keys.celery_queue(queue or ""), self.keys.celery_unacked,
                                   self.keys.celery_unacked_index, self.keys.worker_lives, self.keys.worker_held],
                             args=[token, due_member_for_run(run_id), queue or "", most_unacked, run_id,
                                   listed_after, dead_after, "1" if run_id in held_by_dead else "0"], client=pipe)
        return [(str(verdict), int(fence)) for verdict, fence in pipe.execute()]

    def requeue(self, run_id: str, fence: int, event: dict, send_guard_at: float) -> int | None:
        """Hand a running run back to the queue under a new fence; the new fence, or None if it moved on."""
        answer = self._requeue(keys=[self.keys.run(run_id), self.keys.running, self.keys.events, self.keys.due],
                               args=[str(fence), json.dumps(event), str(self.events_maxlen),
                                     due_member_for_run(run_id), repr(send_guard_at)])
        return None if answer is None else int(answer)

    def hasten_held(self, dead_after: float, due_at: float) -> list[str]:
        """Bring due at ``due_at`` the send guards of runs whose messages a worker silent for ``dead_after``
        seconds had taken and not started (``HASTEN_HELD``); those runs' ids."""
        return list(self._hasten_held(keys=[self.keys.worker_held, self.keys.worker_lives, self.keys.due],
                                      args=[dead_after, due_at, due_member_for_run("")]))

    def heartbeat(self, worker: str, when: float | None = None, stats: dict[str, Any] | None = None,
                  life: str = "", holds: Iterable[str] | None = None) -> None:
        """Note that ``worker`` is alive (``core.metrics`` counts workers seen recently), by Redis's clock
        unless ``when`` is given: the dead-worker watch compares beats from many hosts, whose clocks may
        differ or jump. ``life`` names this start of the worker (``node#id``: a worker restarted under the
        same name is another life, so its beats do not keep its dead predecessor's runs looking alive).
        ``stats``: what the worker says about itself (the workers view shows it), in the same round trip.
        ``holds``: the ids of the messages the life has taken and not finished (reserved or running), so a run
        whose message a dead worker prefetched is sent again (``CHECK_SENT``); None: not said."""
        pipe = self.redis.pipeline(transaction=False)
        if when is None:
            held = "-" if holds is None else " ".join(holds)
            pipe.eval(HEARTBEAT, 3, self.keys.workers, self.keys.worker_lives, self.keys.worker_held, worker, life,
                      held)
        else:
            pipe.zadd(self.keys.workers, {worker: when})
        if stats is not None:
            pipe.hset(self.keys.worker_stats, worker, json.dumps(stats))
        pipe.execute()

    def worker_stats(self) -> dict[str, dict]:
        """Worker hostname → what it said with its last heartbeat (``heartbeat``'s ``stats``)."""
        raw = cast(dict[str, str], self.redis.hgetall(self.keys.worker_stats))
        return {worker: json.loads(value) for worker, value in raw.items()}

    def unacked_by_queue(self, most: int = 2000) -> dict[str, int] | None:
        """Messages delivered and not yet acknowledged, per queue; None when more than ``most`` are (then
        only their total, ``gauges``' ``unacked``, is cheap to know)."""
        flat = self._unacked_by_queue(keys=[self.keys.celery_unacked], args=[most])
        if flat == [-1]:
            return None
        return {str(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}

    def server_time(self) -> float:
        """Redis's clock, in seconds since the epoch: one clock for every host's heartbeats and run starts."""
        seconds, micros = cast(tuple[int, int], self.redis.time())
        return seconds + micros / 1e6

    def end_life(self, life_id: str) -> int:
        """A worker's supervisor saw that start of it (``node#life_id``) exit, its processes killed: it is dead now,
        not after the dead-worker grace. Its id is noted as ended (the dead-worker watch hands its running runs
        over: ``ended_lives``) and its lives leave the lives set (so the messages it had prefetched are sent
        again: ``hasten_held``, ``CHECK_SENT``). How many lives (one per node name) it had."""
        if not LIFE_ID.fullmatch(life_id):
            raise ValueError(f"not a worker life id: {life_id!r}")
        now = self.server_time()
        lives = [member for member, _ in self.redis.zscan_iter(self.keys.worker_lives, match=f"*#{life_id}")]
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(self.keys.worker_ended, {life_id: now})
        pipe.zremrangebyscore(self.keys.worker_ended, "-inf", now - ENDED_KEPT)
        if lives:
            pipe.zrem(self.keys.worker_lives, *lives)
        pipe.execute()
        return len(lives)

    def ended_lives(self) -> set[str]:
        """The ids of the worker starts their supervisors saw exit in the last hour (``end_life``)."""
        return set(cast(list[str], self.redis.zrange(self.keys.worker_ended, 0, -1)))

    def worker_gone(self, worker: str, life: str = "") -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(self.keys.workers, worker)
        if life:
            pipe.zrem(self.keys.worker_lives, life)
            pipe.hdel(self.keys.worker_held, life)
        pipe.hdel(self.keys.worker_stats, worker)
        pipe.execute()

    def add_audit(self, entry: dict[str, str], pipe: redis.client.Pipeline | Batch | None = None) -> None:
        """Append one audit entry (see ``core.audit.entry``), in the change's own pipeline when given;
        entries older than the retention window go, younger ones never do."""
        if isinstance(pipe, Batch):
            pipe.audit(entry)
            return
        pairs = [item for pair in entry.items() for item in pair]
        (pipe or self.redis).eval(AUDIT_ADD, 1, self.keys.audit, str(self.audit_retention), *pairs)

    def take_allowance(self, token_name: str, per_minute: int, cost: int) -> tuple[str, int]:
        """Count ``cost`` changes against an API token's allowance: ``("ok", 0)``, ``("rate", ms to wait)``
        or ``("full", audit entries held)`` when the audit stream holds ``audit_maxlen`` entries."""
        verdict, value = self._take_allowance(
            keys=[self.keys.rate_limit(token_name), self.keys.audit],
            args=[str(per_minute), str(max(1, cost)), str(self.audit_maxlen), str(self.audit_retention)])
        return {0: "ok", 1: "rate", 2: "full"}[int(verdict)], int(value)

    def audit_entries(self, count: int, before: str | None = None) -> list[Entry]:
        """Up to ``count`` audit entries, newest first, older than the entry id ``before`` if given."""
        return cast(list[Entry], self.redis.xrevrange(self.keys.audit, max=f"({before}" if before else "+",
                                                      count=count))

    # -- API tokens ----------------------------------------------------------------------------

    def add_token(self, name: str, digest: str, record: dict, audit: dict[str, str]) -> bool:
        """Store a token's record and hash (and its audit entry) unless the name is taken."""
        pairs = [item for pair in audit.items() for item in pair]
        return bool(self._token_create(
            keys=[self.keys.tokens, self.keys.token_hashes, self.keys.audit, self.keys.token_used],
            args=[name, json.dumps(record), digest, json.dumps({"name": name, "role": record["role"]}),
                  str(self.audit_retention), *pairs]))

    def remove_token(self, name: str, audit: dict[str, str]) -> dict | None:
        """Delete a token (and audit it); its record, or None if there was no such token."""
        pairs = [item for pair in audit.items() for item in pair]
        record = self._token_revoke(keys=[self.keys.tokens, self.keys.token_hashes, self.keys.token_used,
                                          self.keys.audit], args=[name, str(self.audit_retention), *pairs])
        return json.loads(record) if record else None

    def token_records(self) -> list[dict]:
        """Every token's record with its ``last_used_at`` (no secrets: only their hashes are stored)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.tokens)
        pipe.hgetall(self.keys.token_used)
        records, used = pipe.execute()
        return [json.loads(record) | {"last_used_at": _float(used.get(name))} for name, record in records.items()]

    def token_by_hash(self, digest: str) -> dict | None:
        found = self.redis.hget(self.keys.token_hashes, digest)
        return json.loads(found) if found else None

    def mark_token_used(self, name: str, when: float) -> None:
        self.redis.hset(self.keys.token_used, name, repr(when))

    # -- metrics -------------------------------------------------------------------------------

    def count_finished(self, run_id: str, state: RunState, finished_at: float, counts: dict[str, int],
                       sums: dict[str, float], pipe: redis.client.Pipeline) -> None:
        """Queue counter increments that apply only if the finish queued just before them happened."""
        pipe.eval(COUNT_FINISHED, 2, self.keys.run(run_id), self.keys.metrics, state.value, _encode(finished_at),
                  json.dumps({"int": counts or {}, "float": sums or {}}))

    def add_metrics(self, counts: dict[str, int], sums: dict[str, float] | None = None,
                    values: dict[str, float] | None = None, pipe: redis.client.Pipeline | None = None) -> None:
        """Increment counters (``counts``, ``sums``) and set values in the metrics hash."""
        target = pipe or self.redis.pipeline(transaction=True)
        for field, amount in counts.items():
            target.hincrby(self.keys.metrics, field, amount)
        for field, added in (sums or {}).items():
            target.hincrbyfloat(self.keys.metrics, field, added)
        if values:
            target.hset(self.keys.metrics, mapping={field: repr(float(value)) for field, value in values.items()})
        if pipe is None:
            target.execute()

    def gauges(self, queues: Iterable[str], alive_since: float) -> dict[str, Any]:
        """In one round trip: the metrics hash, due-set size, task count, queue lengths, workers alive, and why
        Redis refuses writes if it does (``core.redis_trouble.refusal``)."""
        queues = list(queues)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.metrics)
        pipe.zcard(self.keys.due)
        pipe.zcard(self.keys.tasks)
        pipe.zcount(self.keys.workers, alive_since, "+inf")
        pipe.hlen(self.keys.celery_unacked)
        pipe.exists(self.keys.scheduler_lock)
        pipe.info(*redis_trouble.INFO_SECTIONS)
        for queue in queues:
            pipe.llen(self.keys.celery_queue(queue))
        answers = pipe.execute()
        return {"counters": answers[0], "due": answers[1], "tasks": answers[2], "workers": answers[3],
                "unacked": answers[4], "scheduler": bool(answers[5]),
                "refuses_writes": redis_trouble.refusal(answers[6]),
                "queues": dict(zip(queues, answers[7:], strict=True))}

    def status_reads(self, queues: Iterable[str]) -> dict[str, Any]:
        """In one round trip, what a status line shows: worker reports, heartbeats, due-set size, whether a
        scheduler holds the lock, the data-loss record, why Redis refuses writes if it does (``INFO``: its disk
        or its memory full, ``core.redis_trouble.refusal``), and the length of each of ``queues`` (taken as the
        base queues; queues only some worker reported are read on the next call, once they are known)."""
        queues = list(queues)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.registered)
        pipe.zrange(self.keys.workers, 0, -1, withscores=True)
        pipe.zcard(self.keys.due)
        pipe.exists(self.keys.scheduler_lock)
        pipe.get(self.keys.data_lost)
        pipe.info(*redis_trouble.INFO_SECTIONS)
        for queue in queues:
            pipe.llen(self.keys.celery_queue(queue))
        registered, beats, due, scheduler, lost, info, *lengths = pipe.execute()
        return {"reports": {worker: json.loads(raw) for worker, raw in sorted(registered.items())},
                "beats": dict(beats), "due": due, "scheduler": bool(scheduler),
                "data_lost": json.loads(lost) if lost else None, "queues": dict(zip(queues, lengths, strict=True)),
                "refuses_writes": redis_trouble.refusal(info)}

    def pipeline(self) -> redis.client.Pipeline:
        return self.redis.pipeline(transaction=True)

    def batch(self) -> Batch:
        """A :class:`Batch`: the writes of a bulk create, run as one command (``BATCH``)."""
        return Batch(self)


class Batch:
    """Writes queued like a transaction's (the store's ``pipe=`` methods take it) and run by the ``BATCH``
    script as one command when executed: at once, as a MULTI would, but costing the client one JSON document
    rather than a packed command per write. Only what creating tasks and runs queues is offered."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.commands: list[list[Any]] = []
        self._zadds: dict[str, list[Any]] = {}
        self._pushes: dict[str, tuple[list[Any], list[str]]] = {}

    @staticmethod
    def _flat(mapping: dict[str, Any]) -> list[Any]:
        return [item for pair in mapping.items() for item in pair]

    def hset(self, name: str, key: str | None = None, value: Any = None, mapping: dict | None = None) -> None:
        pairs = ([key, value] if key is not None else []) + self._flat(mapping or {})
        self.commands.append(["HSET", name, *pairs])

    def zadd(self, name: str, mapping: dict[str, float]) -> None:
        """ZADD; a batch's ZADDs to one key are merged into its first (a batch's writes do not read back)."""
        pairs = [item for member, score in mapping.items() for item in (repr(float(score)), member)]
        if name in self._zadds:
            self._zadds[name].extend(pairs)
        else:
            self._zadds[name] = command = ["ZADD", name, *pairs]
            self.commands.append(command)

    def zrem(self, name: str, *members: str) -> None:
        self.commands.append(["ZREM", name, *members])

    def lpush(self, name: str, *values: str) -> None:
        """LPUSH, its values passed beside the JSON document; a batch's pushes to one key are merged into its
        first, in order."""
        if name not in self._pushes:
            command: list[Any] = ["LPUSH*", name, 0, 0]
            self._pushes[name] = (command, [])
            self.commands.append(command)
        self._pushes[name][1].extend(values)

    def zremrangebyrank(self, name: str, start: int, end: int) -> None:
        self.commands.append(["ZREMRANGEBYRANK", name, start, end])

    def xadd(self, name: str, fields: dict[str, str], maxlen: int | None = None, approximate: bool = True) -> None:
        trim = ["MAXLEN", "~" if approximate else "=", maxlen] if maxlen is not None else []
        self.commands.append(["XADD", name, *trim, "*", *self._flat(fields)])

    def audit(self, entry: dict[str, str]) -> None:
        self.commands.append(["AUDIT", *self._flat(entry)])

    def execute(self) -> int:
        if not self.commands:
            return 0
        values: list[str] = []
        for command, pushed in self._pushes.values():
            command[2], command[3] = 3 + len(values), len(pushed)  # ARGV[3..] follow retention and the JSON
            values.extend(pushed)
        return int(self.store._batch(keys=[self.store.keys.audit],
                                     args=[str(self.store.audit_retention), json.dumps(self.commands), *values]))


def resp_argument(text: str) -> bytes:
    """``text`` as one argument of a command in Redis's protocol."""
    data = text.encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def connect(url: str) -> redis.Redis:
    """A Redis client with the options every taskman process uses."""
    return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5, socket_timeout=15,
                                socket_keepalive=True, health_check_interval=30)

