"""Options go to the Rust core as they are: every option name, alias, coercion and
refusal lives there (one parser for Python, Node, the CLI and config files)."""

from __future__ import annotations

from typing import Any, Dict, Optional

from . import _burrow, _state
from ._burrow import Error


def _error(code: str, message: str) -> Error:
    """An exception of the class ``code`` maps to (one mapping, in the native module)."""
    err: Error = _burrow.new_error(code, message)
    return err


def _parse(scope: str, options: Dict[str, Any]) -> "_burrow.NativeOptions":
    return _burrow.parse_options(options, scope, _state.auth_token)


def _forward_options(addr: Any, proto: Optional[str], options: Dict[str, Any]) -> "_burrow.NativeOptions":
    if addr is not None:
        options["addr"] = addr
    if proto is not None:
        options["proto"] = proto
    return _parse("forward", options)
