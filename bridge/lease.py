"""Active/standby for the XMPP bridge across replicas (``[cluster] redis``): a lease in Redis says which
replica's bridge is live.

``RedisLease`` is the lease: one key. ``SET key token NX PX ttl`` takes it; a compare-and-PEXPIRE Lua
script renews it and a compare-and-DEL gives it back, so only the holder of the token extends or releases
it. The holder's own view of it is a deadline on its monotonic clock: the moment the last successful take
or renewal was *sent*, plus ``ttl`` — never later than the expiry Redis applied, which it set on receipt.

``ActiveStandbyBridge`` is the actor that runs it, one of the Gateway's parts. A standby tries to take the
lease every ``renew_interval``; once it holds it, it starts the active parts (``activate(add)``, given by
the bridge wiring: the bridge's MQTT session, the XMPP session, the XMPP bridge rule actor, the rule sets)
and renews every ``renew_interval``. It **fences** — stops the active parts at once, logs an error and is
a standby again — when a renewal finds another token or no key in Redis, or when renewals have failed
(Redis unreachable or too slow) until ``guard`` seconds before its deadline: the parts are stopped before
the lease can lapse in Redis and another replica take it. Its own stop (the Gateway's shutdown) stops the
parts and then releases the lease, so that a standby takes over at its next try rather than after the ttl.

The lease loop runs in a greenlet of its own, so ``health()`` answers while a Redis call waits; every
Redis call is bounded (``gevent.Timeout``) by what is left before the fencing point. ``activate`` runs in
that greenlet too, between two renewals: it is expected to take well under ``lease_ttl - guard``
(starting actors; nothing waits for a network peer there), and a lease that ran out meanwhile is fenced
right after. The Redis client and the clock are passed in.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import gevent
import pykka
from loguru import logger

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["ACTIVE", "STANDBY", "ActiveStandbyBridge", "RedisLease", "default_owner"]

ACTIVE, STANDBY = "active", "standby"
T = TypeVar("T")
#: ``add(part) -> part``: records a started part of the active bridge (an actor ref, or an object with
#: ``stop()``); the parts are stopped in reverse order.
Add = Callable[[Any], Any]
Activate = Callable[[Add], None]
HEALTH_TIMEOUT = 0.3  # seconds an active part may take to say how it is

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def default_owner() -> str:
    """This replica's name in lease tokens and logs: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class RedisLease:
    """One lease: the Redis key ``key`` holding the holder's token for ``ttl`` seconds. Not thread-safe:
    used by one greenlet."""

    def __init__(
        self,
        client: Redis,
        key: str,
        ttl: float,
        *,
        owner: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.key = key
        self.ttl = ttl
        self.owner = owner or default_owner()
        self.clock = clock
        #: This replica's token while it believes it holds the lease, else None.
        self.token: str | None = None
        #: When the lease runs out at the latest, on ``clock`` (0 when not held).
        self.deadline = 0.0
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @property
    def ttl_ms(self) -> int:
        return max(1, round(self.ttl * 1000))

    @property
    def held(self) -> bool:
        return self.token is not None and self.clock() < self.deadline

    def acquire(self) -> bool:
        """Take the lease if nobody holds it; True when taken (with a new token)."""
        token = f"{self.owner}/{uuid.uuid4().hex}"
        sent = self.clock()
        if self.client.set(self.key, token, nx=True, px=self.ttl_ms):
            self.token, self.deadline = token, sent + self.ttl
            return True
        return False

    def renew(self) -> bool:
        """Extend the lease by ``ttl`` if Redis still holds this replica's token; False (and forgotten here)
        when it holds another one or none. Redis errors propagate, the lease kept as it was."""
        if self.token is None:
            return False
        sent = self.clock()
        if int(self._renew(keys=[self.key], args=[self.token, self.ttl_ms])):
            self.deadline = sent + self.ttl
            return True
        self.forget()
        return False

    def release(self) -> bool:
        """Give the lease back (only if Redis still holds this replica's token); True when it did."""
        token = self.token
        self.forget()
        if token is None:
            return False
        return bool(int(self._release(keys=[self.key], args=[token])))

    def forget(self) -> None:
        """Stop believing this replica holds the lease (Redis is not asked)."""
        self.token, self.deadline = None, 0.0

    def holder(self) -> str | None:
        """Who holds the lease now (the ``owner`` part of its token), as Redis says; None: nobody."""
        value = self.client.get(self.key)
        return None if value is None else _text(value).rpartition("/")[0] or _text(value)


class _Late(Exception):
    """A Redis call outlived the time it had (``gevent.Timeout``)."""


class _Deposed(Exception):
    """The activation was overtaken by a fence or a stop."""


def _stop_part(part: Any, timeout: float) -> None:
    try:
        if isinstance(part, pykka.ActorRef):
            part.stop(timeout=timeout)
        else:
            part.stop(timeout)
    except pykka.ActorDeadError:
        pass
    except Exception as exc:  # one part failing to stop must not keep the others running
        logger.warning("bridge: a part failed to stop: {!r}", exc)


def _health_name(cls: type) -> str:
    return str(getattr(cls, "health_name", cls.__name__))


class ActiveStandbyBridge(pykka.ThreadingActor):
    """Runs the bridge's parts on the one replica holding ``lease`` (see the module docstring).

    ``activate(add)`` starts the active parts, passing each to ``add`` as soon as it is started (``add``
    stops it and raises when the lease was lost or the actor is stopping meanwhile); they are stopped in
    reverse order. ``guard``: seconds before the lease's deadline at which a replica that could not renew
    fences (default: ``renew_interval``, at least 1 s, at most a third of the ttl)."""

    def __init__(
        self,
        lease: RedisLease,
        activate: Activate,
        *,
        renew_interval: float,
        guard: float | None = None,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__()
        self.lease = lease
        self.activate = activate
        self.renew_interval = renew_interval
        self.guard = guard if guard is not None else min(lease.ttl / 3, max(renew_interval, 1.0))
        self.stop_timeout = stop_timeout
        self.clock = lease.clock
        self.role = STANDBY
        self.since = self.clock()
        self.takeovers = 0
        self.fenced = 0
        self.redis_ok: bool | None = None  # None: not asked yet
        self.last_error = ""
        self.holder: str | None = None  # who holds the lease, as last seen by this standby
        self._parts: list[Any] = []
        self._generation = 0  # bumped by every fence and stop: an activation in flight sees it
        self._stopping = False
        self._busy = False  # the loop is in a step (not sleeping)
        self._failures = 0  # activations that failed in a row: the next try waits longer
        self._retry_at = 0.0
        self._loop: gevent.Greenlet[Any, Any] | None = None

    # -- actor ---------------------------------------------------------------------------------------------
    def on_start(self) -> None:
        logger.info(
            "bridge: standby for lease {} (ttl {:g} s, renewed every {:g} s) as {}",
            self.lease.key,
            self.lease.ttl,
            self.renew_interval,
            self.lease.owner,
        )
        self._loop = gevent.spawn(self._run)

    def on_stop(self) -> None:
        self._stopping = True
        self._generation += 1
        loop = self._loop
        if loop is not None:
            if self._busy:  # let the step finish (each is bounded), so nothing it started is left running
                loop.join(timeout=self.stop_timeout)
            loop.kill(block=True, timeout=self.stop_timeout)
        if self.role == ACTIVE or self._parts:
            self.role = STANDBY
            self._deactivate()
            try:
                with gevent.Timeout(self.renew_interval, _Late):
                    released = self.lease.release()
            except Exception as exc:
                logger.warning(
                    "bridge: lease {} not released ({!r}): it expires by itself", self.lease.key, exc
                )
            else:
                if released:
                    logger.info("bridge: lease {} released: a standby takes over", self.lease.key)
        self.lease.forget()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        logger.opt(exception=(exception_type, exception_value, traceback)).error("bridge: lease actor failed")
        self.on_stop()

    # -- API -----------------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """For the gateway's /health: this replica's ``role`` (``active`` / ``standby``), Redis reachable,
        takeovers and fences so far, and, when active, what its parts say of themselves."""
        now = self.clock()
        out: dict[str, Any] = {
            "status": "ok",
            "role": self.role,
            "lease": self.lease.key,
            "owner": self.lease.owner,
            "redis": {None: "unknown", True: "ok", False: "unreachable"}[self.redis_ok],
            "role_for_s": round(now - self.since, 1),
            "takeovers": self.takeovers,
            "fenced": self.fenced,
        }
        if self.last_error:
            out["last_error"] = self.last_error
        if self.role == ACTIVE:
            out["lease_left_s"] = round(max(0.0, self.lease.deadline - now), 2)
            parts: dict[str, Any] = {}
            for part in list(self._parts):
                tells = isinstance(part, pykka.ActorRef) and callable(
                    getattr(part.actor_class, "health", None)
                )
                if not tells:
                    continue
                name = _health_name(part.actor_class)
                try:
                    parts[name] = part.proxy().health().get(timeout=HEALTH_TIMEOUT)
                except pykka.ActorDeadError:
                    parts[name] = {"status": "dead"}
                except pykka.Timeout:
                    parts[name] = {"status": "unresponsive"}
            out["parts"] = parts
            out["status"] = next(
                (p.get("status", "ok") for p in parts.values() if p.get("status") != "ok"), "ok"
            )
        else:
            out["holder"] = self.holder
            if self.redis_ok is False:
                out["status"] = "redis-unreachable"
        return out

    def is_active(self) -> bool:
        return self.role == ACTIVE

    # -- the lease loop (its own greenlet) -----------------------------------------------------------------
    def _fence_at(self) -> float:
        return self.lease.deadline - self.guard

    def _run(self) -> None:
        while not self._stopping:
            tick = self.clock() + self.renew_interval
            self._busy = True
            try:
                if self.role == ACTIVE:
                    self._keep()
                else:
                    self._try_take()
            except Exception as exc:  # a bug here must not end the loop, nor leave a bridge unfenced
                logger.opt(exception=exc).error("bridge: lease step failed")
                if self.role == ACTIVE and self.clock() >= self._fence_at():
                    self._fence("lease step failed")
            finally:
                self._busy = False
            wake = min(tick, self._fence_at()) if self.role == ACTIVE else tick
            gevent.sleep(max(0.0, wake - self.clock()))

    def _unreachable(self, exc: BaseException) -> None:
        late = isinstance(exc, _Late)
        self.last_error = "redis: no answer in time" if late else f"redis: {type(exc).__name__}: {exc}"
        if self.redis_ok is not False:
            logger.warning("bridge: Redis unreachable for lease {}: {}", self.lease.key, self.last_error)
        self.redis_ok = False

    def _reachable(self) -> None:
        if self.redis_ok is False:
            logger.info("bridge: Redis reachable again for lease {}", self.lease.key)
        self.redis_ok = True

    def _try_take(self) -> None:
        if self.clock() < self._retry_at:
            return
        try:
            with gevent.Timeout(self.renew_interval, _Late):
                taken = self.lease.acquire()
                holder = None if taken else self.lease.holder()
        except Exception as exc:
            self._unreachable(exc)
            return
        self._reachable()
        if not taken:
            if holder != self.holder:
                logger.info("bridge: standby; lease {} held by {}", self.lease.key, holder)
            self.holder = holder
            return
        self._activate()

    def _keep(self) -> None:
        left = self._fence_at() - self.clock()
        if left <= 0:
            self._fence(
                f"no renewal for {self.lease.ttl - self.guard:.1f} s ({self.last_error or 'none came'})"
            )
            return
        try:
            with gevent.Timeout(left, _Late):
                renewed = self.lease.renew()
        except Exception as exc:
            self._unreachable(exc)
            if self.clock() >= self._fence_at():
                self._fence(f"no renewal for {self.lease.ttl - self.guard:.1f} s ({self.last_error})")
            return
        self._reachable()
        if not renewed:
            self._fence("Redis holds another token or none for it")

    def _activate(self) -> None:
        generation = self._generation
        self.role, self.since, self.holder = ACTIVE, self.clock(), self.lease.owner
        self.takeovers += 1
        logger.warning(
            "bridge: lease {} taken by {}: this replica's bridge is active", self.lease.key, self.lease.owner
        )

        def add(part: T) -> T:
            if generation != self._generation or self._stopping:
                _stop_part(part, self.stop_timeout)
                raise _Deposed
            self._parts.append(part)
            return part

        try:
            self.activate(add)
        except _Deposed:
            return
        except Exception as exc:
            self._failures += 1
            wait = min(60.0, self.renew_interval * 2**self._failures)
            self._retry_at = self.clock() + wait
            logger.opt(exception=exc).error(
                "bridge: starting the active bridge failed; standby again, next try in {:g} s", wait
            )
            self.last_error = f"activation: {exc!r}"
            self.role, self.since = STANDBY, self.clock()
            self._deactivate()
            try:
                with gevent.Timeout(self.renew_interval, _Late):
                    self.lease.release()
            except Exception:
                self.lease.forget()  # it expires by itself
            return
        self._failures = 0
        if self.clock() >= self._fence_at():
            self._fence("starting the bridge took the lease's whole time")

    def _fence(self, reason: str) -> None:
        logger.error(
            "bridge: lease {} lost ({}): fencing, this replica's bridge stops now", self.lease.key, reason
        )
        self.fenced += 1
        self.last_error = f"fenced: {reason}"
        self.role, self.since, self.holder = STANDBY, self.clock(), None
        self.lease.forget()
        self._deactivate()

    def _deactivate(self) -> None:
        self._generation += 1
        parts, self._parts = self._parts, []
        for part in reversed(parts):
            _stop_part(part, self.stop_timeout)
        if parts:
            logger.info("bridge: {} active part(s) stopped", len(parts))
