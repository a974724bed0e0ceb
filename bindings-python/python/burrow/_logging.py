"""The bridge from burrow's Rust logs to Python's :mod:`logging`."""

from __future__ import annotations

import logging
from typing import Union

from . import _burrow, _state
from ._options import _error


_LEVELS = {"OFF": logging.CRITICAL + 1, "NOTSET": logging.CRITICAL + 1, "CRITICAL": logging.CRITICAL,
           "ERROR": logging.ERROR, "WARN": logging.WARNING, "WARNING": logging.WARNING,
           "INFO": logging.INFO, "DEBUG": logging.DEBUG, "TRACE": 5}


def log_level(level: Union[str, int] = "INFO") -> None:
    """Forwards burrow's Rust logs at ``level`` and above to ``logging.getLogger("burrow")``.

    ``level`` is a name (``"TRACE"``, ``"DEBUG"``, ``"INFO"``, ``"WARNING"``, ``"ERROR"``,
    ``"OFF"``) or a :mod:`logging` number. TRACE records use level 5. The records are
    delivered by a background thread, shortly after the event.
    """
    if isinstance(level, int) and not isinstance(level, bool):
        name = next((n for n in ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
                     if level <= _LEVELS[n]), "OFF")
    else:
        name = str(level).upper()
    if name not in _LEVELS:
        raise _error("INVALID_OPTION", f"log level {level!r} is not one of {', '.join(_LEVELS)}")
    _burrow.set_log_level(name)
    _state.bridge_level = _LEVELS[name]
    if _state.bridge_level <= logging.CRITICAL:
        _state.log.setLevel(_state.bridge_level)
