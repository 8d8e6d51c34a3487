"""Units as Ray tasks: a study or a campaign on a Ray cluster (`--executor ray [--ray-address ADDR]`).

Each unit is one task declaring its resources (CPUs, a GPU when its device is CUDA, a memory estimate), so a
mixed cluster places it. A unit that needs another's result gets that task's object reference as an argument:
Ray starts it when the result exists and hands it over, with no polling by the driver. A worker killed in the
middle of a unit (its process, or its node) costs that unit only: Ray runs it again (`max_retries`). An
exception raised by the unit is not retried: the run stops with the unit named. Messages come back through an
inbox (an actor that takes no CPU) and reach the driver's `on_message` as they arrive, so the driver keeps
recording every piece into its resumable cache exactly as with the local executors.

Ray is an optional extra (`pip install 'nonsingular[ray]'`); this module imports it only when an executor is
made.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Any

from ...errors import InputError
from .base import Event, Executor, Failed, Finished, OnMessage, Started, StartMark, Unit
from .local import start_unit

__all__ = ["RayExecutor", "import_ray"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'nonsingular[ray]'"


def import_ray() -> ModuleType:
    """The `ray` module, or a one-line InputError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


class Inbox:
    """The units' messages, in the order they arrive: a plain actor (its methods run one at a time) that takes no
    CPU; units add to it without waiting, the driver takes everything at each poll."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []

    def put(self, item: tuple[str, Any]) -> None:
        self.items.append(item)

    def take(self) -> list[tuple[str, Any]]:
        items, self.items = self.items, []
        return items


class RayOutbox:
    """A Ray worker's outbox. Sending does not wait (a task blocked on `ray.get` hands its CPU back to Ray, which
    would start another unit on it); `flush` waits until the inbox holds everything sent, so a unit's messages
    reach the driver before its result does."""

    def __init__(self, inbox: Any, unit: str) -> None:
        self.inbox, self.unit = inbox, unit
        self._last: Any = None

    def send(self, message: Any) -> None:
        self._last = self.inbox.put.remote((self.unit, message))

    def flush(self) -> None:
        if self._last is not None:
            import ray

            ray.get(self._last)


def run_on_ray(inbox: Any, unit: str, fn: Any, threads: int, args: tuple[Any, ...], *inputs: Any) -> Any:
    """A unit's entry point in a Ray worker; its start mark names the Ray node (several may share a host)."""
    import socket

    import ray

    node = f"{socket.gethostname()}:{ray.get_runtime_context().get_node_id()[:6]}"
    outbox = RayOutbox(inbox, unit)
    try:
        return start_unit(StartMark(node, os.getpid()), outbox, fn, threads, args, inputs)
    finally:
        outbox.flush()


class RayExecutor(Executor):
    """Units as Ray tasks on the cluster at `address`.

    Args:
        address: "auto" joins the cluster running on this machine, "HOST:PORT" a given one, None starts a local
            one for this run (or joins the one RAY_ADDRESS names).
        max_retries: how often a unit whose worker died is run again before the run fails.
    """

    kind = "ray"
    assigns_devices = True

    def __init__(self, address: str | None = None, max_retries: int = 3) -> None:
        ray = import_ray()
        self._ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            try:
                options: dict[str, Any] = {}
                if address is None and not os.environ.get("RAY_ADDRESS"):  # a Ray of our own for this run
                    # Ray ends idle workers beyond one per CPU, and the inbox actor holds a worker
                    # process: without one more, units would keep starting new workers (each importing torch).
                    options["_system_config"] = {"num_workers_soft_limit": (os.cpu_count() or 1) + 1}
                ray.init(
                    address=address,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                    **options,
                )
            except ConnectionError as err:
                raise InputError(f"--ray-address {address}: cannot join the Ray cluster ({err})") from None
        self.max_retries = max_retries
        self._inbox = ray.remote(num_cpus=0)(Inbox).remote()
        self._task = ray.remote(run_on_ray)
        self._refs: dict[Any, str] = {}  # pending object reference -> unit
        self._by_name: dict[str, Any] = {}

    def nodes(self) -> int:
        """Live nodes of the cluster."""
        return sum(1 for node in self._ray.nodes() if node.get("Alive"))

    def submit(self, unit: Unit) -> None:
        r = unit.resources
        options: dict[str, Any] = {
            "num_cpus": r.cpus,
            "num_gpus": r.gpus,
            "max_retries": self.max_retries,
            "retry_exceptions": False,
            "name": unit.name,
        }
        if r.memory:
            options["memory"] = r.memory
        inputs = [self._by_name[name] for name in unit.after]  # top-level references: Ray resolves them first
        threads = max(1, int(r.cpus))
        ref = self._task.options(**options).remote(self._inbox, unit.name, unit.fn, threads, unit.args, *inputs)
        self._refs[ref] = unit.name
        self._by_name[unit.name] = ref

    def _drain(self, on_message: OnMessage, events: list[Event]) -> None:
        for unit, message in self._ray.get(self._inbox.take.remote()):
            if isinstance(message, StartMark):
                events.append(Started(unit, message.node, message.pid))
            else:
                on_message(unit, message)

    def poll(self, on_message: OnMessage, timeout: float) -> list[Event]:
        ray = self._ray
        events: list[Event] = []
        ready: list[Any] = []
        if self._refs:
            ready, _ = ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        self._drain(on_message, events)
        # Units that finished meanwhile: their messages reached the inbox before they returned (their outbox
        # flushes), so a second drain brings them, and a successor's start is not counted before their end.
        rest = [ref for ref in self._refs if ref not in ready]
        if rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            if more:
                self._drain(on_message, events)
                ready += more
        for ref in ready:
            name = self._refs.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayTaskError as err:  # the unit raised: its own exception, not Ray's wrapper
                events.append(Failed(name, err.cause if isinstance(err.cause, BaseException) else err))
                continue
            except ray.exceptions.RayError as err:  # retries spent on dead workers, a lost node, a cancel
                events.append(Failed(name, RuntimeError(str(err).strip().splitlines()[0])))
                continue
            events.append(Finished(name, result))
        return events

    def cancel_queued(self) -> None:
        """Cancel every unit not finished (running ones too: the run has failed and their results would be
        thrown away)."""
        for ref in self._refs:
            self._ray.cancel(ref)
        self._refs.clear()

    def close(self) -> None:
        """Cancel what still runs (a run stopped by an error or Ctrl-C leaves nothing busy on the cluster), then
        release the inbox and, if this executor started Ray, Ray itself."""
        self.cancel_queued()
        self._ray.kill(self._inbox)
        if self._owns:
            self._ray.shutdown()
