"""Shared sessions: one per (server, token, CA, metadata), connected once even when
forwards race, and the helpers that make calls loop-aware as ngrok's are."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import _burrow, _state

_SessionKey = Tuple[Any, ...]
_sessions: Dict[_SessionKey, "_burrow.NativeSession"] = {}  # reused by later forwards
_all_sessions: List["_burrow.NativeSession"] = []  # every session kill() closes
_pending: Dict[_SessionKey, "concurrent.futures.Future[_burrow.NativeSession]"] = {}


class _Abandoned(Exception):
    """The caller connecting a shared session was cancelled; waiters try again."""


def _session_key(opts: "_burrow.NativeOptions") -> _SessionKey:
    return (opts.reuse_key(),)


def _claim(key: _SessionKey) -> Tuple[Optional["_burrow.NativeSession"],
                                      "concurrent.futures.Future[_burrow.NativeSession]", bool]:
    """The shared session for ``key``, or a future to wait on, or (True) the duty to connect."""
    with _state.lock:
        if key in _sessions and not _sessions[key].is_open():
            del _sessions[key]  # closed (Session.close, or the edge gone for good): connect anew
        if key in _sessions:
            return _sessions[key], concurrent.futures.Future(), False
        if key in _pending:
            return None, _pending[key], False
        fut: concurrent.futures.Future[_burrow.NativeSession] = concurrent.futures.Future()
        _pending[key] = fut
        return None, fut, True


def _adopt(native: "_burrow.NativeSession", key: Optional[_SessionKey]) -> "_burrow.NativeSession":
    with _state.lock:
        _all_sessions.append(native)
        if key is not None:
            _sessions[key] = native
    if native.embedded_edge() is not None and _state.bridge_level > logging.INFO:
        # (With the bridge at INFO the core says this itself.)
        _state.log.info("no server address given: started an embedded edge in this process")
    return native


def _settle(key: _SessionKey, fut: "concurrent.futures.Future[_burrow.NativeSession]",
            native: Optional["_burrow.NativeSession"], error: Optional[BaseException]) -> None:
    if native is not None:
        _adopt(native, key)
    with _state.lock:
        _pending.pop(key, None)
    if native is not None:
        fut.set_result(native)
    else:
        fut.set_exception(error if isinstance(error, Exception) else _Abandoned())


def _session_for(opts: "_burrow.NativeOptions") -> "_burrow.NativeSession":
    """One session per (server, token, CA, metadata), connected once even under races."""
    if opts.force_new_session():
        return _adopt(_burrow.NativeSession.connect(opts), None)
    key = _session_key(opts)
    while True:
        native, fut, mine = _claim(key)
        if native is not None:
            return native
        if not mine:
            try:
                return fut.result()
            except _Abandoned:
                continue
        try:
            native = _burrow.NativeSession.connect(opts)
        except BaseException as e:
            _settle(key, fut, None, e)
            raise
        _settle(key, fut, native, None)
        return native


async def _session_for_async(opts: "_burrow.NativeOptions") -> "_burrow.NativeSession":
    """Like :func:`_session_for`, without blocking the event loop."""
    if opts.force_new_session():
        return _adopt(await _burrow.NativeSession.connect_async(opts), None)
    key = _session_key(opts)
    while True:
        native, fut, mine = _claim(key)
        if native is not None:
            return native
        if not mine:
            try:
                return await asyncio.wrap_future(fut)
            except _Abandoned:
                continue
        try:
            native = await _burrow.NativeSession.connect_async(opts)
        except BaseException as e:
            _settle(key, fut, None, e)
            raise
        _settle(key, fut, native, None)
        return native


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _done(value: Any) -> Any:
    """``value``, or inside a running loop an already-completed awaitable of it: how a
    call ngrok makes awaitable stays a plain call in scripts. (A Future, unlike a
    coroutine, may go un-awaited without a warning, and the work is already done.)"""
    if not _in_running_loop():
        return value
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut


def _loop_aware(blocking: Callable[[], Any], awaitable: Callable[[], Any]) -> Any:
    """``blocking()`` with no running loop in this thread, else the awaitable (as ngrok's)."""
    return awaitable() if _in_running_loop() else blocking()
