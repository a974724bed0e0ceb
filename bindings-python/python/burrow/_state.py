"""State the package's modules share: one lock, the default authtoken, the log
bridge's level and the open listeners."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Dict, Optional

if TYPE_CHECKING:
    from ._listener import Listener

lock = threading.Lock()
auth_token: Optional[str] = None  # set_auth_token(); used when a call passes none
bridge_level = logging.CRITICAL + 1  # the level Rust events reach Python logging at (none yet)
listeners: Dict[str, "Listener"] = {}  # every open listener, so dropping one never stops it
log = logging.getLogger("burrow")
