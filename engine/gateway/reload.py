"""Hot reload: compile a new policy off the request path, then swap it in with one assignment.

Triggers: a change to any *.rules file under the policy path (watchfiles, debounced, so one
editor save compiles once), SIGHUP, and POST /admin/reload. A load that fails changes nothing
that is served: the error is logged and kept for GET /admin/policy.

Careless edits are held back: a reload waits until the files have stopped changing (size and
mtime steady over the settle period, --reload-settle), and a policy that would drop every rule, provider or key the
live one has is refused unless forced (POST /admin/reload?force=1): a file caught half-written
must not open the gateway to keyless clients.
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import weakref
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from pathlib import Path

from ..lang.errors import PolicyError
from ..lang.policy import load_policy, prepare_policy, prepared_policy, read_sources, version_of

log = logging.getLogger("edgerules.reload")

DEBOUNCE_MS = 150
# Besides file events, the files' hash is compared with the live version this often: it catches
# an edit made between loading and the watcher starting, and filesystems without events.
POLL_SECONDS = 1.0
# A file must keep its size and mtime this long before it is loaded; a writer pausing between
# two writes for less than this is not caught half-way (EDGERULES_RELOAD_SETTLE, e.g. 0.5).
ENV_SETTLE = "EDGERULES_RELOAD_SETTLE"   # seconds, as `serve` exports it (--reload-settle)
DEFAULT_SETTLE = 0.3
SETTLE_LIMIT = 30.0   # a file still changing after this long is loaded as it is
# While a reload's thread parses and checks (pure Python: seconds of bytecode at 10,000 rules),
# the serving thread waits for the GIL up to the switch interval each time it wakes (5 ms by
# default, several times per request); a shorter one keeps those waits short. Restored after.
RELOAD_SWITCH_INTERVAL = 0.0005   # seconds
# From this many bytes of .rules (about 2,000 rules) a reload is parsed, checked and compiled in a
# helper process started at the first such reload (it keeps its parse cache between reloads);
# this process only rebuilds the result, about a fifth of the work.
HELPER_BYTES = 200_000
HELPER_NICE = 10   # the helper's scheduling priority, below the serving process's
HELPER_PARENT_POLL = 1.0   # seconds between the helper's checks that the serving process lives
# A replaced policy of this many rules is freed a slice of RELEASE_SLICE objects at a time once
# no request uses it (checked every RELEASE_POLL s; after RELEASE_WAIT s it is left to Python).
RELEASE_RULES = 1_000
RELEASE_SLICE = 500
RELEASE_POLL = 0.1
RELEASE_WAIT = 600.0


class Reloader:
    def __init__(self, gw, path: str):
        self.gw = gw
        self.path = path
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._failed_version: str | None = None
        self.settle_seconds = float(os.environ.get(ENV_SETTLE) or DEFAULT_SETTLE)
        self._helper: ProcessPoolExecutor | None = None
        self._releases: set[asyncio.Task] = set()

    async def reload(self, reason: str, force: bool = False, settle: bool = True) -> dict:
        """Load, check and compile in a worker thread; install only a policy that loaded.

        Whatever goes wrong is reported in the answer and in GET /admin/policy, never raised, so
        the watcher and the poller that call this keep running."""
        async with self._lock:
            try:
                return await self._reload(reason, force, settle)
            except Exception as exc:   # a bug or an exhausted resource: report it, keep serving
                log.exception("policy reload (%s) failed unexpectedly", reason)
                self._failed_version = await asyncio.to_thread(self._disk_version)
                return self._failed(PolicyError([_diagnostic("internal", f"{type(exc).__name__}: {exc}")]),
                                    reason)

    async def _reload(self, reason: str, force: bool, settle: bool) -> dict:
        if settle:
            await self._settle()
        started = time.perf_counter()
        old = self.gw.live.policy if self.gw.live else None
        try:
            policy = await self._load()
        except PolicyError as exc:
            self._failed_version = await asyncio.to_thread(self._disk_version)
            return self._failed(exc, reason)
        except OSError as exc:
            return self._failed(PolicyError([_io_diagnostic(exc)]), reason)
        # The version hashes the .rules files; an api's OpenAPI document can change on its own.
        if old is not None and policy.version == old.version and policy.servers == old.servers:
            self._failed_version = None
            self.gw.last_error = None
            return {"ok": True, "version": policy.version, "changed": False}
        dropped = _dropped_everything(old, policy)
        if dropped and not force:
            self._failed_version = policy.version
            message = (f"refused: the new policy has no {dropped} while the live one has some; "
                       "if that is meant, reload with POST /admin/reload?force=1")
            return self._failed(PolicyError([_diagnostic("reload-refused", message)]), reason)
        self._failed_version = None
        changes = self.gw.install(policy)
        if old is not None and len(old.rules) >= RELEASE_RULES:
            self._release_later(old)
        self.gw.last_error = None
        self.gw.metrics.reloads["ok"] += 1
        ms = (time.perf_counter() - started) * 1000
        summary = _describe(old, policy, changes)
        log.info("policy %s loaded in %.1f ms (%s): %s", policy.version, ms, reason, summary)
        return {"ok": True, "version": policy.version, "changed": True, "ms": round(ms, 1),
                "summary": summary}

    async def _load(self):
        """The policy at self.path: prepared by the helper process when it is big, else (or when
        the helper is unavailable or the policy cannot travel) loaded in a worker thread."""
        if await asyncio.to_thread(self._size) >= HELPER_BYTES:
            try:
                if self._helper is None:
                    self._helper = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                       initializer=_background)
                pending = asyncio.get_running_loop().run_in_executor(self._helper, prepare_policy, self.path)
            except Exception as exc:   # no process can be started here (limits, a daemonic parent)
                log.warning("the reload helper process cannot start (%s); loading in this process", exc)
                self._close_helper()
            else:
                try:
                    data = await pending
                except BrokenExecutor as exc:   # the helper died (killed, out of memory)
                    log.warning("the reload helper process failed (%s); loading in this process", exc)
                    self._close_helper()
                else:
                    policy = await _off_the_loop(prepared_policy, data)
                    if policy is not None:
                        return policy
        return await _off_the_loop(load_policy, self.path)

    def _release_later(self, old) -> None:
        """Free the replaced policy a slice at a time once its last request is done, instead of
        in one decref wherever that happens (~20 ms on the event loop at 10,000 rules)."""
        objects, namespaces = old.bulk()
        task = asyncio.get_running_loop().create_task(_release(weakref.ref(old), objects, namespaces))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    def _size(self) -> int:
        return sum(max(size, 0) for _, size, _ in self._snapshot())

    def _close_helper(self) -> None:
        if self._helper is not None:
            self._helper.shutdown(wait=False, cancel_futures=True)
            self._helper = None

    def _failed(self, exc: PolicyError, reason: str) -> dict:
        self.gw.metrics.reloads["error"] += 1
        errors = [d for d in exc.diagnostics if d.severity == "error"]
        first = errors[0] if errors else None
        self.gw.last_error = {
            "at": time.time(), "reason": reason, "message": str(exc),
            "diagnostics": [d.to_dict() for d in exc.diagnostics],
            "location": str(first.location) if first and first.location else None,
        }
        live = self.gw.live.policy.version if self.gw.live else "none"
        log.error("policy reload (%s) failed; still serving %s:\n%s", reason, live, exc)
        return {"ok": False, "version": live, "error": self.gw.last_error}

    async def follow(self, path: str, swap):
        """Run swap() (a canary's promotion) between reloads; unless it returns None, reload from
        `path` from now on: the watcher moves there, and the poller compares its files with the live version."""
        async with self._lock:
            result = swap()
            if result is None:
                return None
            self.path, self._failed_version = path, None
            self.gw.last_error = None
            if self._tasks:
                watch = self._tasks[0]
                watch.cancel()
                self._tasks[0] = asyncio.get_running_loop().create_task(self._watch())
            return result

    # ---- triggers -------------------------------------------------------------------------

    def start(self, watch: bool, on_sighup=None) -> None:
        """on_sighup replaces the plain reload on SIGHUP (with --workers, a reload reported to the others)."""
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, on_sighup or (lambda: loop.create_task(self.reload("SIGHUP"))))
        except (NotImplementedError, RuntimeError, ValueError):
            log.warning("SIGHUP reloads are not available here")
        if watch:
            self._tasks = [loop.create_task(self._watch()), loop.create_task(self._poll())]

    async def stop(self) -> None:
        self._close_helper()
        for task in list(self._releases):   # what they hold is freed with the process
            task.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    def _disk_version(self) -> str | None:
        try:
            return version_of(read_sources(self.path))
        except (PolicyError, OSError):
            return None

    def _snapshot(self) -> tuple:
        """(name, size, mtime) of every policy file: what a writer still writing changes."""
        root = Path(self.path)
        files = sorted(root.rglob("*.rules")) if root.is_dir() else [root]
        out = []
        for f in files:
            try:
                st = f.stat()
            except OSError:        # removed between the listing and the stat: still changing
                out.append((str(f), -1, -1))
                continue
            out.append((str(f), st.st_size, st.st_mtime_ns))
        return tuple(out)

    async def _settle(self) -> None:
        """Wait until the files have kept their size and mtime for the settle period."""
        give_up = time.monotonic() + SETTLE_LIMIT
        before = await asyncio.to_thread(self._snapshot)
        while time.monotonic() < give_up:
            await asyncio.sleep(self.settle_seconds)
            now = await asyncio.to_thread(self._snapshot)
            if now == before:
                return
            before = now
        log.warning("the policy files kept changing for %.0f s; loading them as they are", SETTLE_LIMIT)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            if self._lock.locked():
                continue
            try:
                disk = await asyncio.to_thread(self._disk_version)
                live = self.gw.live.policy.version if self.gw.live else None
                if disk is not None and disk != live and disk != self._failed_version:
                    await self.reload("files differ from the live policy")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the policy poller hit an error; it keeps polling")

    async def _watch(self) -> None:
        from watchfiles import awatch

        root = Path(self.path)
        target = root if root.is_dir() else root.parent
        while True:   # the watcher comes back after any failure; the poller covers the gap
            try:
                async for changes in awatch(target, debounce=DEBOUNCE_MS, step=50,
                                            watch_filter=lambda _change, p: p.endswith(".rules"),
                                            recursive=root.is_dir()):
                    names = sorted({Path(p).name for _, p in changes})
                    await self.reload("file change: " + ", ".join(names))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the policy watcher failed; restarting it in %.0f s (the poller goes on)",
                              POLL_SECONDS)
            await asyncio.sleep(POLL_SECONDS)


async def _release(policy, objects: list, namespaces: list[dict]) -> None:
    """Wait for the policy (a weak reference) to be gone, then drop what it held a slice at a time."""
    give_up = time.monotonic() + RELEASE_WAIT
    while policy() is not None and time.monotonic() < give_up:
        await asyncio.sleep(RELEASE_POLL)
    if policy() is None:
        for namespace in namespaces:   # nothing runs its code any more: break the cycle
            namespace.clear()
    namespaces.clear()
    while objects:
        del objects[-RELEASE_SLICE:]
        await asyncio.sleep(0)


def _background() -> None:
    """The helper's CPU time yields to the serving process's: on a busy machine the scheduler
    otherwise shares the cores evenly, and requests wait for their time slice. And it ends with
    the serving process, however that ends (a killed server left it waiting for work forever)."""
    try:
        os.nice(HELPER_NICE)
    except OSError:
        pass
    threading.Thread(target=_end_with, args=(os.getppid(),), daemon=True, name="edgerules-helper-parent").start()


def _end_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(HELPER_PARENT_POLL)
    os._exit(0)


async def _off_the_loop(func, *args):
    """func(*args) in a worker thread, with a short GIL switch interval while it runs."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, RELOAD_SWITCH_INTERVAL))
    try:
        return await asyncio.to_thread(func, *args)
    finally:
        sys.setswitchinterval(previous)


def _describe(old, new, changes: dict) -> str:
    if old is None:
        return f"{len(new.rules)} rules, {len(new.providers)} providers"
    parts = []
    before, after = set(old.rules), set(new.rules)   # sets: 10,000 rules must not stall the event loop
    added = [r for r in new.rules if r not in before]
    removed = [r for r in old.rules if r not in after]
    if added:
        parts.append("rules added: " + ", ".join(added))
    if removed:
        parts.append("rules removed: " + ", ".join(removed))
    for what in ("added", "removed", "replaced"):
        if changes[what]:
            parts.append(f"providers {what}: " + ", ".join(changes[what]))
    if not parts:
        parts.append("rules edited")
    return f"{old.version} -> {new.version}; " + "; ".join(parts)


def _dropped_everything(old, new) -> str | None:
    """What the new policy lost entirely ('rules', 'providers', 'keys'), or None."""
    if old is None:
        return None
    lost = [what for what, a, b in (("rules", old.rules, new.rules),
                                    ("providers", old.providers, new.providers),
                                    ("keys", old.keys, new.keys)) if a and not b]
    return " and no ".join(lost) or None


def _diagnostic(code: str, message: str):
    from ..lang.errors import Diagnostic
    return Diagnostic(code, message, None)


def _io_diagnostic(exc: OSError):
    return _diagnostic("io", f"cannot read the policy: {exc.strerror or exc}")
