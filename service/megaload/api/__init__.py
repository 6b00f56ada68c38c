"""The HTTP layer: thin FastAPI routers over the :class:`~megaload.runtime.Runtime`.

``routes/<resource>.py`` hold one router each; :mod:`.deps` the dependency aliases;
:mod:`.problems` the one error mapping; :mod:`.middleware` request ids, logs and metrics.
"""
