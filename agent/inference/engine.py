"""The inference engine: several models at once, each with a pool of interpreters.

A TFLite interpreter is not thread-safe, so each model owns ``workers`` interpreters; a request
borrows one for the duration of its invoke (LiteRT releases the GIL in ``invoke``, so two
interpreters run in parallel on two cores). Admission is bounded per model: at most
``workers + queue_depth`` requests are queued or running, the next one is refused at once with
:class:`QueueFullError` instead of piling up. Apps that name themselves (a client id) share a
model: while another app has called it within the last ``CLIENT_WINDOW_S`` seconds, one app
holds at most half its places, so a flood from one app leaves the other half to the rest.
Requests without a client id count as one app; an id is not a security boundary (an app may
claim several).

The :class:`Engine` keeps models within a memory budget: models are registered (name, version,
file) and loaded eagerly when pinned, lazily on first request otherwise; when a load would exceed
the budget, the least recently used idle unpinned models are unloaded first.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import (
    AgentError,
    DelegateError,
    InferenceError,
    InputError,
    ModelFileError,
    ModelNotFoundError,
    QueueFullError,
    UnsupportedModelError,
)
from agent.inference.backends import choose_backend, load_edgetpu_delegate
from agent.inference.metrics import ModelMetrics, StatsWindow
from agent.inference.modelfile import EDGETPU_CUSTOM_OP, ModelInfo, inspect_model_file
from agent.inference.runtime import find_runtime
from agent.inference.validation import InputRule

__all__ = [
    "CLIENT_WINDOW_S",
    "MAX_CLIENTS",
    "Engine",
    "EngineOptions",
    "LoadedModel",
    "ModelStatus",
    "StatsWindow",
    "load_model",
]

log = logging.getLogger(__name__)
CLIENT_WINDOW_S = 10.0  # another app that called within this long gets its share of a model
MAX_CLIENTS = 256  # client ids remembered per model (the oldest forgotten first)


@dataclass(frozen=True)
class EngineOptions:
    """How models are run. Bounded defaults for a small device."""

    workers: int = 2  # interpreters per model
    queue_depth: int = 32  # requests waiting for an interpreter, per model
    num_threads: int = 1  # CPU threads per interpreter
    queue_timeout_s: float = 10.0  # longest wait for a free interpreter
    memory_budget_bytes: int = 0  # 0 = no budget
    edgetpus: tuple[str, ...] = ()  # delegate device names found by the probe: "usb:0", ...
    edgetpu_library: str = "libedgetpu.so.1"
    prefer: str = "auto"  # "auto" | "cpu" | "edgetpu"


class _Slot:
    """One interpreter with its tensor indices."""

    __slots__ = ("inputs", "interpreter", "outputs")

    def __init__(self, interpreter: Any) -> None:
        self.interpreter = interpreter
        self.inputs = [int(d["index"]) for d in interpreter.get_input_details()]
        self.outputs = [int(d["index"]) for d in interpreter.get_output_details()]


class LoadedModel:
    """One model version with its interpreter pool, ready to run."""

    def __init__(
        self,
        name: str,
        version: str,
        path: Path,
        info: ModelInfo,
        interpreters: Sequence[Any],
        *,
        backend: str = "cpu",
        device: str = "",
        backend_reason: str = "",
        queue_depth: int = 32,
        queue_timeout_s: float = 10.0,
        target_workers: int = 0,
        spawn: Callable[[], Any] | None = None,
    ) -> None:
        if not interpreters:
            raise ValueError("a model needs at least one interpreter")
        self.name = name
        self.version = version
        self.path = path
        self.info = info
        self.backend = backend
        self.device = device
        self.backend_reason = backend_reason
        self.variant = ""  # the release's variant name serving, when the caller knows it
        self.workers = len(interpreters)
        # Interpreters still to add with spawn() (see grow()): the pool's size once grown.
        self.target_workers = max(self.workers, target_workers if spawn is not None else 0)
        self._spawn = spawn
        self._grow_lock = threading.Lock()
        self.stats = ModelMetrics()
        self.last_used = time.monotonic()
        self._pool: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        for interpreter in interpreters:
            self._pool.put(_Slot(interpreter))
        self.queue_depth = queue_depth
        # Places (workers + queue_depth; grows with the pool) taken, in all and per client.
        self._admission = threading.Lock()
        self._admitted = 0
        self._by_client: dict[str, int] = {}
        self._seen: dict[str, float] = {}  # client -> its last request (monotonic), bounded
        self._queue_timeout = queue_timeout_s
        self.output_shapes = tuple(t.shape for t in info.outputs)  # after warm-up: as run
        self._expected = [(np.dtype(t.dtype), t.shape, t.name) for t in info.inputs]

    @property
    def memory_bytes(self) -> int:
        """Estimated resident cost: the model file plus one activation arena per interpreter
        (of the grown pool)."""
        return self.info.size + self.target_workers * self.info.activation_bytes

    @property
    def saturated(self) -> bool:
        """Every interpreter busy and the queue full: a new request would be refused."""
        return self.stats.in_flight >= self.workers + self.queue_depth

    @property
    def idle(self) -> bool:
        return self.stats.in_flight == 0

    def infer(
        self, inputs: Sequence[np.ndarray], *, record: bool = True, client: str = ""
    ) -> list[np.ndarray]:
        """Run the model on ``inputs`` (one array per graph input, in order) for ``client``
        (an app's self-chosen id, "" for none; see the module's docstring).

        ``record=False`` keeps internal runs (warm-up, smoke tests) out of the statistics.

        Raises:
            InputError: wrong number, dtype or shape of inputs.
            QueueFullError: too many requests are queued for this model.
            InferenceError: the runtime failed.
        """
        self._check_inputs(inputs)
        refusal = self._admit(client)
        if refusal:
            if record:
                self.stats.reject()
            raise QueueFullError(refusal)
        self.last_used = time.monotonic()
        try:
            if record:
                self.stats.started()
            start = time.perf_counter()
            try:
                slot = self._pool.get(timeout=self._queue_timeout)
            except queue.Empty:
                if record:
                    self.stats.gave_up()  # load, not a fault of the model
                raise QueueFullError(
                    f"model {self.name}: no interpreter free within {self._queue_timeout:.0f} s"
                ) from None
            got = time.perf_counter()
            ok = False
            try:
                for index, array in zip(slot.inputs, inputs, strict=True):
                    slot.interpreter.set_tensor(index, array)
                slot.interpreter.invoke()
                outputs = [slot.interpreter.get_tensor(i).copy() for i in slot.outputs]
                ok = True
                return outputs
            except (RuntimeError, ValueError) as exc:
                raise InferenceError(f"model {self.name} {self.version} failed: {exc}") from exc
            finally:
                self._pool.put(slot)
                if record:
                    done = time.perf_counter()
                    self.stats.finished((got - start) * 1000.0, (done - got) * 1000.0, ok=ok)
        finally:
            self._leave(client)

    def _admit(self, client: str) -> str:
        """Take a place for one request of ``client``; "" when taken, else why not."""
        with self._admission:
            others = self._others_calling(client)
            places = self.workers + self.queue_depth
            if self._admitted >= places:
                return (f"model {self.name} has {self.workers} busy interpreter(s) and a full "
                        "queue; retry later")  # fmt: skip
            held = self._by_client.get(client, 0)
            share = max(1, places // 2)
            if held >= share and others:
                return (f"model {self.name}: client {client or '(unnamed)'} holds {held} of its "
                        f"{places} places while other clients call it; retry later")  # fmt: skip
            self._admitted += 1
            self._by_client[client] = held + 1
            return ""

    def _others_calling(self, client: str) -> bool:
        """Note a request of ``client``; whether another client called recently (lock held)."""
        now = time.monotonic()
        self._seen.pop(client, None)
        self._seen[client] = now  # newest last
        while len(self._seen) > MAX_CLIENTS or next(iter(self._seen.values())) < now - (
            CLIENT_WINDOW_S
        ):
            self._seen.pop(next(iter(self._seen)))
        return len(self._seen) > 1

    def _leave(self, client: str) -> None:
        with self._admission:
            self._admitted -= 1
            held = self._by_client.pop(client, 1) - 1
            if held:
                self._by_client[client] = held

    def _check_inputs(self, inputs: Sequence[np.ndarray]) -> None:
        if len(inputs) != len(self._expected):
            raise InputError(
                f"model {self.name} takes {len(self._expected)} input(s), got {len(inputs)}"
            )
        for array, (dtype, shape, name) in zip(inputs, self._expected, strict=True):
            if array.dtype != dtype:
                raise InputError(f"input {name!r} of {self.name} is {dtype}, got {array.dtype}")
            if array.shape != shape:
                raise InputError(
                    f"input {name!r} of {self.name} has shape {list(shape)}, "
                    f"got {list(array.shape)}"
                )

    def warm_up(self) -> None:
        """Run every interpreter once on zeros, so the first real request is not the slow one.

        Raises:
            InferenceError: the model cannot run.
        """
        slots = [self._pool.get() for _ in range(self.workers)]
        try:
            for slot in slots:
                self._warm(slot)
        finally:
            for slot in slots:
                self._pool.put(slot)

    def _warm(self, slot: _Slot) -> None:
        zeros = [np.zeros(shape, dtype=dtype) for dtype, shape, _ in self._expected]
        for index, array in zip(slot.inputs, zeros, strict=True):
            slot.interpreter.set_tensor(index, array)
        try:
            slot.interpreter.invoke()
        except (RuntimeError, ValueError) as exc:
            raise InferenceError(
                f"model {self.name} {self.version} fails on its first run: {exc}"
            ) from exc
        # Some outputs have no shape until the model runs (TFLite_Detection_PostProcess: the
        # file says [], a run gives [1, 40, 4]): what the first run produced is what it serves.
        self.output_shapes = tuple(
            tuple(int(d) for d in slot.interpreter.get_tensor(i).shape) for i in slot.outputs
        )

    def grow(self) -> int:
        """Add the interpreters a deferred load left out, each warmed up before it serves;
        return how many were added. A model activated with one interpreter (to serve sooner)
        reaches its full pool here; when one cannot be made, it keeps serving with fewer."""
        added = 0
        with self._grow_lock:
            while self._spawn is not None and self.workers < self.target_workers:
                try:
                    slot = _Slot(self._spawn())
                    self._warm(slot)
                except AgentError as exc:
                    log.warning("%s %s keeps %d interpreter(s): %s", self.name, self.version,
                                self.workers, exc)  # fmt: skip
                    self.target_workers = self.workers
                    break
                self._pool.put(slot)
                with self._admission:
                    self.workers += 1  # one more place
                added += 1
        return added


def _interpreter(
    runtime: Any, path: Path, num_threads: int, delegates: list[Any], library: str
) -> Any:
    try:
        interpreter = runtime.interpreter_cls(
            model_path=str(path), num_threads=num_threads, experimental_delegates=delegates or None
        )
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        text = str(exc).strip()
        first_line = text.splitlines()[0] if text else type(exc).__name__
        if delegates and EDGETPU_CUSTOM_OP in text:
            raise DelegateError(
                f"the delegate from {library} did not take the model's {EDGETPU_CUSTOM_OP}: "
                "is it libedgetpu, and is it as new as the compiler that built the model?"
            ) from exc
        raise ModelFileError(f"{path.name}: the runtime cannot load it: {first_line}") from exc
    return interpreter


def load_model(
    path: Path,
    name: str,
    version: str,
    *,
    num_threads: int = 1,
    workers: int = 1,
    queue_depth: int = 32,
    queue_timeout_s: float = 10.0,
    edgetpus: Sequence[str] = (),
    models_per_tpu: Mapping[str, int] | None = None,
    edgetpu_library: str = "libedgetpu.so.1",
    prefer: str = "auto",
    deferred: bool = False,
) -> LoadedModel:
    """Inspect a model, choose its backend, and load it with its interpreter pool.

    An Edge TPU-compiled model gets one interpreter on the chosen TPU (the TPU runs one
    inference at a time); a CPU model gets ``workers`` interpreters with XNNPACK, or with
    ``deferred`` one now and the others when :meth:`LoadedModel.grow` is called.

    Raises:
        ModelFileError: not a loadable TFLite model.
        UnsupportedModelError: an Edge TPU model and no Edge TPU.
        DelegateError: the Edge TPU delegate could not be loaded or did not take the model.
        RuntimeMissingError: no TFLite runtime is installed.
    """
    info = inspect_model_file(path)
    try:
        choice = choose_backend(
            info, edgetpus, models_per_tpu or {}, prefer=prefer, num_threads=num_threads
        )
    except UnsupportedModelError as exc:
        raise UnsupportedModelError(f"{path.name}: {exc}") from exc
    runtime = find_runtime()
    if choice.backend == "edgetpu":
        delegate = load_edgetpu_delegate(runtime.load_delegate, edgetpu_library, choice.device)
        interpreters = [_interpreter(runtime, path, num_threads, [delegate], edgetpu_library)]
    else:
        interpreters = [
            _interpreter(runtime, path, num_threads, [], edgetpu_library)
            for _ in range(1 if deferred else max(1, workers))
        ]
    return LoadedModel(
        name,
        version,
        path,
        info,
        interpreters,
        backend=choice.backend,
        device=choice.device,
        backend_reason=choice.reason,
        queue_depth=queue_depth,
        queue_timeout_s=queue_timeout_s,
        target_workers=max(1, workers),
        spawn=None
        if choice.backend == "edgetpu"
        else lambda: _interpreter(runtime, path, num_threads, [], edgetpu_library),
    )


_LOADABLE = ("not loaded yet", "evicted (memory budget)")  # the reasons of no failure


@dataclass(frozen=True)
class ModelStatus:
    """What the engine knows about one registered model."""

    name: str
    version: str
    state: str  # "READY" | "UNAVAILABLE"
    reason: str
    pinned: bool
    held: bool = False  # unloaded on request: stays so until loaded explicitly

    @property
    def loadable(self) -> bool:
        """Not loaded, but its next request loads it (no load failure recorded)."""
        return self.state != "READY" and not self.held and self.reason in _LOADABLE


@dataclass
class _Entry:
    version: str
    path: Path
    pinned: bool
    model: LoadedModel | None = None
    reason: str = "not loaded yet"
    held: bool = False  # unloaded by an explicit request: stays unloaded until loaded again
    loading: threading.Lock = field(default_factory=threading.Lock)  # one load at a time


# (path, name, version, models per Edge TPU, deferred pool) -> a loaded model
Loader = Callable[[Path, str, str, Mapping[str, int], bool], LoadedModel]


class Engine:
    """The models this agent serves, by name, within a memory budget. Thread-safe."""

    def __init__(self, options: EngineOptions | None = None, loader: Loader | None = None) -> None:
        self.options = options or EngineOptions()
        self._loader = loader or self._default_loader
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.RLock()
        self.loads = 0
        self.evictions = 0
        self._input_rules: Mapping[str, InputRule] = {}

    def set_input_rules(self, rules: Mapping[str, InputRule]) -> None:
        """Validate the inputs of these models from now on (the config's [validation.*])."""
        self._input_rules = dict(rules)  # one assignment: requests see the old or the new

    def input_rule(self, name: str) -> InputRule | None:
        """The input validation of model ``name``, if the config asks for one."""
        return self._input_rules.get(name)

    def _default_loader(
        self, path: Path, name: str, version: str, models_per_tpu: Mapping[str, int], deferred: bool
    ) -> LoadedModel:
        o = self.options
        return load_model(
            path,
            name,
            version,
            num_threads=o.num_threads,
            workers=o.workers,
            queue_depth=o.queue_depth,
            queue_timeout_s=o.queue_timeout_s,
            edgetpus=o.edgetpus,
            models_per_tpu=models_per_tpu,
            edgetpu_library=o.edgetpu_library,
            prefer=o.prefer,
            deferred=deferred,
        )

    def _models_per_tpu(self, replacing: str) -> dict[str, int]:
        with self._lock:
            counts: dict[str, int] = {}
            for name, entry in self._entries.items():
                if entry.model is not None and entry.model.device and name != replacing:
                    counts[entry.model.device] = counts.get(entry.model.device, 0) + 1
            return counts

    # registration ----------------------------------------------------------------------------

    def load(
        self,
        name: str,
        version: str,
        path: Path,
        *,
        cpu_fallback: Path | None = None,
        deferred: bool = False,
        warm: bool = True,
        variant: str = "",
        fallback_variant: str = "",
    ) -> LoadedModel:
        """Load and warm up a model without serving it yet (the updater smoke-tests it first).
        With ``deferred`` a CPU model gets one interpreter; the caller grows the pool
        (:meth:`LoadedModel.grow`) once the model serves. ``warm=False`` skips the warm-up run
        for a caller that runs the model next anyway (the smoke test).

        When the model needs an Edge TPU that cannot be used (none present, delegate missing or
        refusing the device) and ``cpu_fallback`` names the model's CPU variant, that variant is
        loaded instead and the reason is kept in ``backend_reason`` (logged and reported).
        ``variant`` and ``fallback_variant`` name the two files' variants (the release's
        manifest): the loaded model's ``variant`` is the one that serves.

        Raises:
            AgentError: the model cannot be loaded or run.
        """
        try:
            model = self._loader(path, name, version, self._models_per_tpu(name), deferred)
            model.variant = variant
        except (DelegateError, UnsupportedModelError) as exc:
            if cpu_fallback is None:
                raise
            log.warning("%s %s: %s; serving its CPU variant instead", name, version, exc)
            model = self._loader(cpu_fallback, name, version, {}, deferred)
            model.backend_reason = f"fell back to the CPU variant: {exc}"
            model.variant = fallback_variant
        if warm:
            model.warm_up()
        with self._lock:
            self.loads += 1
        return model

    def put(self, model: LoadedModel, *, pinned: bool = True) -> LoadedModel | None:
        """Serve ``model`` under its name from now on; return the model it replaced."""
        with self._lock:
            previous = self._entries.get(model.name)
            self._make_room(model.memory_bytes, keep=model.name)
            self._entries[model.name] = _Entry(model.version, model.path, pinned, model, "")
            return previous.model if previous else None

    def register(self, name: str, version: str, path: Path, *, pinned: bool) -> None:
        """Know a model without loading it; it loads on first request (lazy)."""
        with self._lock:
            self._entries[name] = _Entry(version, path, pinned)

    def unload(self, name: str) -> bool:
        """Drop a model's interpreters on request; it stays unloaded until :meth:`get` is
        called with ``explicit_load=True`` (evicted models, by contrast, reload on demand).

        Returns False when no such model is registered.
        """
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                return False
            entry.model, entry.reason, entry.held = None, "unloaded on request", True
            return True

    # serving ---------------------------------------------------------------------------------

    def get(self, name: str, version: str = "", *, explicit_load: bool = False) -> LoadedModel:
        """The model called ``name`` (and ``version``, if given), loading it if needed.

        ``explicit_load`` also loads a model that was unloaded on request.

        Raises:
            ModelNotFoundError: unknown name or version.
            AgentError: a lazy load failed (the reason is kept for ModelReady and the index).
        """
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                raise ModelNotFoundError(f"model {name!r} is not loaded on this device")
            if version and version != entry.version:
                raise ModelNotFoundError(
                    f"model {name!r} version {version!r} is not loaded (loaded: {entry.version})"
                )
            if entry.model is not None:
                return entry.model
            if entry.held and not explicit_load:
                raise ModelNotFoundError(
                    f"model {name!r} was unloaded on request; load it again first"
                )
            loading = entry.loading
        # Load outside the engine lock, so other models keep serving meanwhile; concurrent
        # requests for this model wait for the one load instead of starting their own.
        with loading:
            with self._lock:
                if entry.model is not None:
                    return entry.model
                target_version, target_path = entry.version, entry.path
            try:
                model = self.load(name, target_version, target_path)
            except AgentError as exc:
                with self._lock:
                    entry.reason = str(exc)
                raise
            with self._lock:
                if self._entries.get(name) is not entry or entry.version != target_version:
                    # Replaced while loading: serve what is there now.
                    current = self._entries.get(name)
                    if current is not None and current.model is not None:
                        return current.model
                self._make_room(model.memory_bytes, keep=name)
                entry.model, entry.reason, entry.held = model, "", False
            log.info("loaded %s %s on demand", name, target_version)
            return model

    def peek(self, name: str) -> LoadedModel | None:
        """The loaded model called ``name``, without loading it."""
        with self._lock:
            entry = self._entries.get(name)
            return entry.model if entry else None

    def wedged(self, limit_s: float) -> str:
        """Why the engine looks wedged ("" when healthy): a model with requests in flight
        that has finished none for ``limit_s``."""
        for model in self.models():
            stuck = model.stats.stuck_for()
            if stuck > limit_s:
                return (
                    f"model {model.name} has {model.stats.in_flight} request(s) in flight and "
                    f"finished none for {stuck:.0f} s"
                )
        return ""

    def models(self) -> list[LoadedModel]:
        """A snapshot of the loaded models, sorted by name."""
        with self._lock:
            return [e.model for _, e in sorted(self._entries.items()) if e.model is not None]

    def index(self) -> list[ModelStatus]:
        """Every registered model and its state."""
        with self._lock:
            return [
                ModelStatus(
                    name,
                    e.version,
                    "READY" if e.model is not None else "UNAVAILABLE",
                    e.reason,
                    e.pinned,
                    e.held,
                )
                for name, e in sorted(self._entries.items())
            ]

    def memory_bytes(self) -> int:
        """Estimated memory of the loaded models."""
        with self._lock:
            return sum(e.model.memory_bytes for e in self._entries.values() if e.model)

    def _make_room(self, needed: int, keep: str) -> None:
        budget = self.options.memory_budget_bytes
        if not budget:
            return
        used = sum(
            e.model.memory_bytes
            for n, e in self._entries.items()
            if e.model is not None and n != keep
        )
        candidates = sorted(
            (
                (e.model.last_used, n)
                for n, e in self._entries.items()
                if e.model is not None and not e.pinned and n != keep and e.model.idle
            ),
        )
        for _, victim in candidates:
            if used + needed <= budget:
                break
            entry = self._entries[victim]
            assert entry.model is not None  # noqa: S101 - filtered above
            used -= entry.model.memory_bytes
            log.info("evicting idle model %s to stay within the memory budget", victim)
            entry.model, entry.reason = None, "evicted (memory budget)"
            self.evictions += 1
        if used + needed > budget:
            log.warning(
                "loading %s needs %d bytes; %d of the %d-byte budget are held by pinned or busy "
                "models",
                keep,
                needed,
                used,
                budget,
            )
