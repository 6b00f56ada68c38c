"""The engine: the one owner of torch.distributed and of every megatron call.

One worker thread (:mod:`._worker`) runs commands strictly in the order they were submitted.
The event loop submits a command and awaits its future, so it never runs heavy work itself::

    engine = Engine(device="auto", backend="auto", metrics=metrics)
    engine.start()                       # thread starts; first command builds the context
    await engine.wait_ready()            # READY, or raises NotReadyError with the cause
    info = await engine.load(model_id, spec)
    config = await engine.run(ModelConfig(path=...))
    ...
    engine.shutdown(grace_seconds=30)    # blocking: cancels queued commands, waits for the
                                         # running one, destroys the process group

Commands (:mod:`.commands`) are frozen, picklable dataclasses; :mod:`._handlers` holds what
each does. Under torchrun rank 0 broadcasts the command object and every rank runs the same
handler (:mod:`._ranks`; :meth:`Engine.follow` is the loop of the other ranks). Models live in
the engine, keyed by model id; the registry holds their :class:`LoadedModel` handles.

Life cycle (:class:`EngineState`): starting -> ready -> stopping -> stopped, or
starting -> failed when the context cannot be built (or, later, when a collective fails).
"""

from . import commands
from ._engine import Engine, EngineState
from ._model import LoadedModel

__all__ = ["Engine", "EngineState", "LoadedModel", "commands"]
