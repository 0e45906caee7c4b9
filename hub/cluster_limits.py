"""Rate limits and budgets counted across the cluster, in Redis (issue 13; docs/PROTOCOL.md
"Running several hubs").

With ``broker.url`` set, every node admits a completion or workflow request of a subject
against the same counters: one Lua script call per admission (:data:`_ADMIT_LUA`, EVALSHA)
decides it atomically in Redis, so two nodes admitting at the same instant never exceed a limit
together. The admissions a node asks for in one event-loop iteration go in one pipelined round
trip (one batch in flight; the next gathers meanwhile), as the broker batches events: a burst
of requests costs a few round trips, not one each, and one connection. The limits and their
answers are those of hub/ratelimit.py (the same ``rate_limited`` refusals, reasons and
``retryAfterMs``); only where they are counted changes.

Layout, every name starting with ``broker.prefix`` (P)::

    P lim:rpm:<subject>   hash t (tokens), u (updated, ms of Redis TIME), c (capacity): the
                          requests-per-minute bucket; expires when it would be full again
    P lim:tpm:<subject>   the same for tokens per minute
    P lim:run:<subject>   sorted set: one lease per running request, member <node>:<n>,
                          score its deadline (ms of Redis TIME)

**Buckets**: the script refills them from Redis ``TIME`` (one clock for the whole cluster,
whatever the nodes' clocks say), at ``rate / 60000`` per ms up to the capacity, then takes 1
request and the request's token estimate, or takes nothing and answers the wait. A bucket
whose limit changed starts full (as a fresh one does in memory). The key expires when the
bucket would be full again, so an idle subject costs nothing.

**Concurrency as leases**: an admitted request adds a lease whose deadline is
``broker.node_timeout_s`` ahead; its node refreshes the deadlines of all its running requests
every third of that (one round trip for all of them), and removes the lease when the request
ends. Before counting, the script drops the leases past their deadline: the runs of a node
that died (or lost Redis) stop counting ``broker.node_timeout_s`` after its last refresh,
without anyone having to notice the death.

**Release**: a request's end is queued and sent with the next round trip of this node's one
settling task (:meth:`ClusterLimiter._settle`): the lease is removed and the difference between
the request's real usage and its estimate is settled on the tpm bucket (as in memory, it may go
below zero). The settling task sends releases and lease refreshes one round trip at a time, in
order, so a refresh never revives a lease that was removed.

**Redis unreachable at admission**: the request is admitted by this node's own
:class:`~hub.ratelimit.RateLimiter` (fail open with local limits) and Redis is not asked again
for :data:`RETRY_AFTER_FAILURE_S`. A hub keeps streaming while Redis is away (the broker does
too), and refusing every completion because the counter is unreachable would turn a Redis
outage into a full outage; each node still bounds every subject by the same limits, so during
an outage a subject gets at most N times its limits over N nodes. The local count of running
requests includes the ones the cluster admitted on this node, so a subject's runs here keep
counting through the outage. Admissions decided locally are not written to Redis afterwards.

Cost, on this 2-core machine against a local Redis 7: an admission alone waits one round trip,
0.1-0.2 ms (PING: 0.05-0.1 ms; in memory 2 us; tests/test_cluster_limits.py
``test_admission_cost`` prints it); 2000 admissions at once take 40 us each, in one round trip.
An admission and its release cost Redis about 19 us of CPU (its own Redis, measured with INFO
commandstats). A subject without any limit never asks Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import secrets
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from hub.ratelimit import LimitedPrincipal, RateLimiter, Ticket, over_bucket, over_concurrency

__all__ = ["ClusterLimiter", "ClusterTicket", "ADMIT_TIMEOUT_S", "RETRY_AFTER_FAILURE_S"]

log = logging.getLogger("cbhub.limits")

#: The longest an admission waits for Redis before this node decides alone, in s.
ADMIT_TIMEOUT_S = 0.5
#: After Redis failed to answer an admission, admissions are local for this long, in s.
RETRY_AFTER_FAILURE_S = 1.0
#: Releases kept while Redis is away (the oldest are dropped past it: their leases expire).
_MAX_PENDING_RELEASES = 100_000

#: The bucket helpers both scripts share. ``now`` is Redis TIME in ms; a bucket of capacity
#: ``cap`` per minute refills at cap / 60000 per ms.
_BUCKET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local function level(key, cap)
  local state = redis.call('HMGET', key, 't', 'u', 'c')
  local tokens, updated = tonumber(state[1]), tonumber(state[2])
  if tokens == nil or updated == nil or tonumber(state[3]) ~= cap then return cap end
  if now > updated then tokens = math.min(cap, tokens + (now - updated) * cap / 60000) end
  return tokens
end
local function store(key, tokens, cap)
  redis.call('HSET', key, 't', tostring(tokens), 'u', tostring(now), 'c', tostring(cap))
  redis.call('PEXPIRE', key, math.ceil((cap - tokens) * 60000 / cap) + 1000)
end
local function lease(key, member, ms)
  redis.call('ZADD', key, tostring(now + ms), member)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, math.ceil(ms) + 1000) end
end
"""

#: KEYS: rpm bucket, tpm bucket, leases. ARGV: rpm, tpm (0: none), max_concurrent (-1: none),
#: estimate, lease member, lease ms. Returns {1, tokens taken}, or a refusal {0, kind, value}:
#: kind 1 concurrency (value: running), 2 rpm and 3 tpm (value: the wait in ms, rounded up).
_ADMIT_LUA = _BUCKET_LUA + """
local rpm, tpm, most = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local estimate, ms = tonumber(ARGV[4]), tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', tostring(now))
if most >= 0 then
  local running = redis.call('ZCARD', KEYS[3])
  if running >= most then return {0, 1, running} end
end
local wait, kind = 0, 0
local requests, tokens
if rpm > 0 then
  requests = level(KEYS[1], rpm)
  local missing = math.min(1, rpm) - requests
  if missing > 0 and missing * 60000 / rpm > wait then wait, kind = missing * 60000 / rpm, 2 end
end
if tpm > 0 then
  tokens = level(KEYS[2], tpm)
  local missing = math.min(estimate, tpm) - tokens
  if missing > 0 and missing * 60000 / tpm > wait then wait, kind = missing * 60000 / tpm, 3 end
end
if wait > 0 then return {0, kind, math.ceil(wait)} end
local taken = 0
if rpm > 0 then store(KEYS[1], requests - 1, rpm) end
if tpm > 0 then
  taken = math.min(estimate, tpm)
  store(KEYS[2], tokens - taken, tpm)
end
lease(KEYS[3], ARGV[5], ms)
return {1, taken}
"""

#: Releases, then lease refreshes. ARGV[1]: lease ms; ARGV[2]: n, the releases. Release i:
#: KEYS[2i-1] leases, KEYS[2i] tpm bucket; ARGV member, tokens to settle (real - estimate),
#: tpm (0: none). Then per refresh: KEYS leases, ARGV member. Returns the leases refreshed.
_SETTLE_LUA = _BUCKET_LUA + """
local ms, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local a = 3
for i = 1, n do
  local leases, bucket = KEYS[2 * i - 1], KEYS[2 * i]
  local member, settle, cap = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  redis.call('ZREM', leases, member)
  if cap > 0 and settle ~= 0 then store(bucket, math.min(cap, level(bucket, cap) - settle), cap) end
end
local refreshed = 0
for k = 2 * n + 1, #KEYS do
  lease(KEYS[k], ARGV[a], ms)
  a = a + 1
  refreshed = refreshed + 1
end
return refreshed
"""


class ClusterTicket(Ticket):
    """A request admitted by the cluster's counters: :meth:`release` queues the end of its
    lease and the settling of its tokens for Redis (see the module docstring).

    Attributes:
        subject, estimate: as :class:`~hub.ratelimit.Ticket`'s (``estimate``: tokens taken from
            the tpm bucket at admission).
        lease: its member in ``P lim:run:<subject>``.
        tpm: the tpm limit it was admitted under (None: none).
    """

    __slots__ = ("_cluster", "lease", "tpm")

    def __init__(self, cluster: ClusterLimiter, subject: str, estimate: int, lease: str, tpm: int | None) -> None:
        super().__init__(cluster.local, subject, estimate, None)
        self._cluster = cluster
        self.lease = lease
        self.tpm = tpm

    def release(self, used_tokens: int | None = None) -> None:
        """The request ended: free its concurrency slot in the cluster and settle its tokens
        (``used_tokens``: prompt + completion tokens; None: the estimate stands). Once; later
        calls do nothing. Does not wait for Redis."""
        if self._released:
            return
        self._released = True
        self._limiter._release(self.subject)
        settle = used_tokens - self.estimate if used_tokens is not None and self.tpm is not None else 0
        self._cluster._released(self, settle)


class _Admission:
    """One admission waiting for its batch: the script's keys and arguments, and the future
    its caller awaits (cancelled when the caller gave up)."""

    __slots__ = ("subject", "member", "keys", "args", "future")

    def __init__(self, subject: str, member: str, keys: list[str], args: list[Any],
                 future: asyncio.Future[Any]) -> None:
        self.subject = subject
        self.member = member
        self.keys = keys
        self.args = args
        self.future = future


class ClusterLimiter:
    """The per-subject limits of hub/ratelimit.py, counted in Redis for every node sharing
    ``prefix`` (see the module docstring).

    Args:
        url: the Redis URL (``broker.url``).
        prefix: ``broker.prefix``; every key is ``<prefix>lim:...``.
        local: this node's limiter: its defaults (``auth.default_limits``) apply, and it
            admits alone while Redis does not answer.
        lease_s: how long a lease lives without a refresh (``broker.node_timeout_s``), > 0.

    Attributes:
        admissions: requests decided in Redis (admitted or refused).
        admission_round_trips: the round trips that carried them (one per batch).
        fallbacks: requests decided locally because Redis did not answer.
        round_trips: settling round trips (releases and refreshes) answered.
        refreshes: those of them that refreshed the live leases.
    """

    def __init__(self, url: str, prefix: str, local: RateLimiter, lease_s: float) -> None:
        self.url = url
        self.prefix = prefix
        self.local = local
        self.lease_s = lease_s
        self.admissions = 0
        self.admission_round_trips = 0
        self.fallbacks = 0
        self.round_trips = 0
        self.refreshes = 0
        self._queued = 0  # releases queued so far, and answered by Redis so far
        self._answered = 0
        self._progress = asyncio.Condition()
        self._node = secrets.token_hex(6)
        self._numbers = itertools.count(1)
        self._redis: aioredis.Redis | None = None
        self._admit_sha = _sha1(_ADMIT_LUA)
        self._settle_sha = _sha1(_SETTLE_LUA)
        self._batch: list[_Admission] = []  # admissions of this event-loop iteration
        self._batch_scheduled = False
        self._batch_inflight: asyncio.Task[None] | None = None
        self._live: dict[str, ClusterTicket] = {}  # lease -> ticket, admitted and not released
        self._releases: list[tuple[str, str, str, int, int]] = []  # leases key, tpm key, member, settle, tpm
        self._wake = asyncio.Event()
        self._settler: asyncio.Task[None] | None = None
        self._down_until = 0.0

    # Connection.

    async def connect(self) -> None:
        """Open this node's client (its own connections: one for admissions, one for the
        settling task), load the scripts and start the settling task. A Redis that does not
        answer raises nothing here: admissions are local until it does (module docstring)."""
        client = aioredis.from_url(self.url, socket_connect_timeout=ADMIT_TIMEOUT_S, socket_timeout=2.0)
        self._redis = client
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(ADMIT_TIMEOUT_S):
                await client.script_load(_ADMIT_LUA)
                await client.script_load(_SETTLE_LUA)
        self._settler = asyncio.get_running_loop().create_task(self._settle(), name="cluster-limits")

    async def close(self) -> None:
        """Send the queued releases (one last round trip; when Redis does not answer, the
        leases expire on their own), stop, and disconnect."""
        if self._settler is not None:
            self._settler.cancel()
            await asyncio.gather(self._settler, return_exceptions=True)
            self._settler = None
        if self._batch_inflight is not None:  # its callers are gone with the hub's sessions
            self._batch_inflight.cancel()
            await asyncio.gather(self._batch_inflight, return_exceptions=True)
        if self._redis is not None:
            if self._releases:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    async with asyncio.timeout(ADMIT_TIMEOUT_S):
                        await self._send(refresh=False)
            await self._redis.aclose()
            self._redis = None

    def _key(self, kind: str, subject: str) -> str:
        return f"{self.prefix}lim:{kind}:{subject}"

    async def _run_scripts(self, sha: str, source: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run one script once per ``(keys, args)`` in one pipelined round trip (EVALSHA; a
        Redis that lost its script cache gets it again, and the calls it refused run again).

        Returns:
            Each call's answer, or the exception Redis answered it with.

        Raises:
            RedisError, OSError: the round trip failed (the calls may or may not have run).
        """
        client = self._redis
        if client is None:
            raise ConnectionError("the cluster limits are closed")
        pipe = client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
        answers: list[Any] = await pipe.execute(raise_on_error=False)
        again = [index for index, answer in enumerate(answers) if isinstance(answer, NoScriptError)]
        if again:
            await client.script_load(source)
            pipe = client.pipeline(transaction=False)
            for index in again:
                keys, args = calls[index]
                pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
            for index, answer in zip(again, await pipe.execute(raise_on_error=False), strict=True):
                answers[index] = answer
        return answers

    # Admission.

    async def admit(self, principal: LimitedPrincipal, estimate: int = 0) -> Ticket:
        """Admit one request of ``principal`` expected to use ``estimate`` tokens, counted
        across the cluster, or refuse it; as :meth:`hub.ratelimit.RateLimiter.admit` (the
        same limits, refusals and ``retry_after_ms``). The admissions asked in one event-loop
        iteration go to Redis in one round trip (one script call each). A subject without any
        limit is admitted here without asking Redis; so is every request while Redis does not
        answer (within :data:`ADMIT_TIMEOUT_S`).

        Returns:
            The request's ticket: release it when the request ends.

        Raises:
            HubError: ``rate_limited`` (retryable) with ``retry_after_ms``.
        """
        rpm, tpm, most = self.local.limits_of(principal)
        if (rpm is None and tpm is None and most is None) or self._redis is None \
                or time.monotonic() < self._down_until:
            return self.local.admit(principal, estimate)
        subject = principal.subject
        member = f"{self._node}:{next(self._numbers)}"
        loop = asyncio.get_running_loop()
        admission = _Admission(subject, member, [self._key("rpm", subject), self._key("tpm", subject),
                                                 self._key("run", subject)],
                               [rpm or 0, tpm or 0, -1 if most is None else most, estimate, member,
                                self.lease_s * 1000], loop.create_future())
        self._batch.append(admission)
        if not self._batch_scheduled and self._batch_inflight is None:
            self._batch_scheduled = True
            loop.call_soon(self._send_batch)
        try:
            async with asyncio.timeout(ADMIT_TIMEOUT_S):
                answer = await admission.future  # cancelled with this wait: its answer is undone
        except ResponseError as exc:  # the script failed for this subject alone (a key of another type...)
            log.error("cluster limits: Redis refused the admission of %s: %s", subject, exc)
            self.fallbacks += 1
            return self.local.admit(principal, estimate)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return self.local.admit(principal, estimate)
        self.admissions += 1
        if not int(answer[0]):
            kind, value = int(answer[1]), int(answer[2])
            if kind == 1:
                raise over_concurrency(subject, value, most or 0)
            raise over_bucket(subject, "requests" if kind == 2 else "tokens", rpm if kind == 2 else tpm, value)
        ticket = ClusterTicket(self, subject, int(answer[1]), member, tpm)
        self.local._hold(subject)
        self._live[member] = ticket
        return ticket

    def _send_batch(self) -> None:
        """Send the admissions waiting (those whose callers still wait), one round trip."""
        self._batch_scheduled = False
        batch = [admission for admission in self._batch if not admission.future.done()]
        self._batch = []
        if batch:
            self._batch_inflight = asyncio.get_running_loop().create_task(self._admit_batch(batch))
            self._batch_inflight.add_done_callback(self._batch_sent)

    def _batch_sent(self, task: asyncio.Task[None]) -> None:
        self._batch_inflight = None
        if self._batch:  # what came while this batch was in flight
            self._send_batch()

    async def _admit_batch(self, batch: list[_Admission]) -> None:
        try:
            answers = await self._run_scripts(self._admit_sha, _ADMIT_LUA,
                                              [(admission.keys, admission.args) for admission in batch])
        except (RedisError, OSError) as exc:
            for admission in batch:
                self._forget(admission.subject, admission.member)  # in case its script ran
                if not admission.future.done():
                    admission.future.set_exception(exc)
            return
        self.admission_round_trips += 1
        for admission, answer in zip(batch, answers, strict=True):
            if isinstance(answer, Exception):
                if not admission.future.done():
                    admission.future.set_exception(answer)
            elif not admission.future.done():
                admission.future.set_result(answer)
            elif int(answer[0]):  # admitted for a caller that gave up (timed out, cancelled)
                self._forget(admission.subject, admission.member)

    def _failed(self, exc: BaseException) -> None:
        """Redis did not answer an admission: decide locally for a while."""
        self.fallbacks += 1
        if time.monotonic() >= self._down_until:
            log.warning("cluster limits: Redis did not answer (%s); admitting with this node's limits for %g s",
                        type(exc).__name__, RETRY_AFTER_FAILURE_S)
        self._down_until = time.monotonic() + RETRY_AFTER_FAILURE_S

    def _forget(self, subject: str, member: str) -> None:
        """Remove a lease whose admission got no answer here (nothing to settle)."""
        self._queue((self._key("run", subject), self._key("tpm", subject), member, 0, 0))

    # Release and refresh.

    def _released(self, ticket: ClusterTicket, settle: int) -> None:
        self._live.pop(ticket.lease, None)
        self._queue((self._key("run", ticket.subject), self._key("tpm", ticket.subject), ticket.lease, settle,
                     ticket.tpm or 0))

    def _queue(self, release: tuple[str, str, str, int, int]) -> None:
        self._queued += 1
        self._releases.append(release)
        if len(self._releases) > _MAX_PENDING_RELEASES:
            del self._releases[0]
        self._wake.set()

    async def _settle(self) -> None:
        """The settling task: releases as soon as there are some, refreshes of every live
        lease every third of the lease time; one round trip at a time."""
        interval = self.lease_s / 3
        next_refresh = time.monotonic() + interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_refresh - time.monotonic())):
                    await self._wake.wait()
            self._wake.clear()
            refresh = time.monotonic() >= next_refresh
            if refresh:
                next_refresh = time.monotonic() + interval
            if not self._releases and not (refresh and self._live):
                continue
            try:
                await self._send(refresh)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("cluster limits: settling failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(min(interval, RETRY_AFTER_FAILURE_S))
                self._wake.set()

    async def _send(self, refresh: bool) -> None:
        """One round trip: every queued release, then (``refresh``) every live lease. The
        releases go back to the queue when Redis did not answer; when Redis answered with an
        error (the script failed: a key of another type under the prefix...), they are
        dropped and logged rather than retried forever (their leases expire on their own).

        Raises:
            RedisError, OSError, TimeoutError: Redis did not answer.
        """
        releases, self._releases = self._releases, []
        done = self._queued  # every release queued so far is in this round trip
        keys: list[str] = []
        args: list[Any] = [self.lease_s * 1000, len(releases)]
        for leases, bucket, member, settle, tpm in releases:
            keys += (leases, bucket)
            args += (member, settle, tpm)
        if refresh:
            for member, ticket in self._live.items():
                keys.append(self._key("run", ticket.subject))
                args.append(member)
        try:
            answer = (await self._run_scripts(self._settle_sha, _SETTLE_LUA, [(keys, args)]))[0]
        except BaseException:
            self._releases[:0] = releases
            raise
        if isinstance(answer, Exception):
            log.error("cluster limits: Redis refused %d releases and %d refreshes: %s", len(releases),
                      len(keys) - 2 * len(releases), answer)
        self.round_trips += 1
        self.refreshes += refresh
        self._answered = done
        async with self._progress:
            self._progress.notify_all()

    async def flush(self) -> None:
        """Wait until Redis has answered every release queued so far (the slots of the
        requests that ended are free on every node), however long it takes."""
        target = self._queued
        async with self._progress:
            await self._progress.wait_for(lambda: self._answered >= target)

    def statistics(self) -> dict[str, int | bool]:
        """Counts for ``/healthz``: ``admissions`` decided in Redis and the
        ``admission_round_trips`` that carried them, ``fallbacks`` (decided here, Redis not
        answering), ``local_only`` (true while admissions skip Redis after a failure),
        ``live`` (requests admitted through Redis, not ended), ``releases_pending`` (ended,
        not yet written to Redis), ``round_trips`` of releases and refreshes."""
        return {"admissions": self.admissions, "admission_round_trips": self.admission_round_trips,
                "fallbacks": self.fallbacks, "local_only": time.monotonic() < self._down_until,
                "live": len(self._live), "releases_pending": len(self._releases), "round_trips": self.round_trips}

    def live(self) -> int:
        """Requests this node admitted through Redis and that have not ended."""
        return len(self._live)


def _sha1(source: str) -> str:
    """The SHA-1 EVALSHA names a script by."""
    return hashlib.sha1(source.encode()).hexdigest()
