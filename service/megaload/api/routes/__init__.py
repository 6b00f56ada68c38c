"""One router per resource.

``health`` (``/healthz``, ``/readyz``, ``/metrics``) and ``pages`` (the status page at ``/``;
``/docs`` and ``/redoc`` come from :func:`pages.install_docs`) are open; every other router is
mounted under ``/v1`` behind the bearer-token dependency. The state-dict streaming routes
(``GET /v1/models/{id}/state_dict`` and ``GET, HEAD /v1/models/{id}/state_dict/{n}``) plug in
as one more router in :data:`V1_ROUTERS`: they take ``runtime.acquire(model_id)`` (a read
lease, released in the ``finally`` of the streamed body) and add to the runtime's
``stream_bytes`` metric; errors they raise map through ``api.problems``.
``hub`` (the Hugging Face Hub endpoint) is mounted under ``/hf`` (``problems.HUB_PREFIX``),
behind the same bearer-token dependency.
"""

from . import checkpoints, health, hub, info, jobs, models, pages, state_dict

OPEN_ROUTERS = [health.router, pages.router]
V1_ROUTERS = [info.router, checkpoints.router, models.router, state_dict.router, jobs.router]
HUB_ROUTERS = [hub.router]

__all__ = ["OPEN_ROUTERS", "V1_ROUTERS", "HUB_ROUTERS"]
