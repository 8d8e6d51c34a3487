"""Where and how work runs: files written without loss, the compute device, and torch.distributed ranks.

Owns atomic writes and output-path checks (`files`), device resolution (`devices`), the rank helpers that
let evaluation and training split examples across processes (`distributed`), graceful stops on SIGINT/SIGTERM
(`signals`) and locks on output folders and cache entries (`locks`). The lowest layer above the vocabulary:
imports only `errors`, never another nonsingular package.
"""

from .devices import resolve_device
from .files import atomic_write, check_output_path, make_folder
from .locks import FileLock, LockedError
from .signals import Stopped, check_stop, stop_on_signals

__all__ = [
    "FileLock",
    "LockedError",
    "Stopped",
    "atomic_write",
    "check_output_path",
    "check_stop",
    "make_folder",
    "resolve_device",
    "stop_on_signals",
]
