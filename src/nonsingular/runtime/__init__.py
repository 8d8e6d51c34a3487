"""Where and how work runs: files written without loss, the compute device, and torch.distributed ranks.

Owns atomic writes and output-path checks (`files`), device resolution (`devices`) and the rank helpers that
let evaluation and training split examples across processes (`distributed`). The lowest layer above the
vocabulary: imports only `errors`, never another nonsingular package.
"""

from .devices import resolve_device
from .files import atomic_write, check_output_path, make_folder

__all__ = ["atomic_write", "check_output_path", "make_folder", "resolve_device"]
