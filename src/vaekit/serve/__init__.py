"""``vaekit serve``: an HTTP service and an in-browser latent-space explorer over a trained run.

    explorer.py   the model side, free of any web framework: validated inputs, decoding, analysis, limits
    app.py        the FastAPI application (JSON API with an OpenAPI schema, the page, error mapping)
    security.py   who may talk to it: the Host allow-list, the same-origin rule, the token
    server.py     running it on uvicorn: binding the socket, connection limits, a clean stop
    static/       the page: plain HTML, CSS and JavaScript, no build step

The web packages are an optional extra (``pip install 'vaekit[serve]'``); ``require_serve_packages``
names the missing ones. ``create_app`` and ``serve`` import them only when called.
"""

from __future__ import annotations

from typing import Any

from .explorer import Explorer, ReferenceData, ServeLimits

SERVE_MODULES = ("fastapi", "uvicorn", "python_multipart")


def require_serve_packages() -> None:
    """Raise one clear ``MissingDependencyError`` naming every missing web package and how to install them."""
    from ..export import require

    require(*SERVE_MODULES, feature="vaekit serve", extra="serve")


def create_app(*args: Any, **kwargs: Any):
    """The FastAPI application over an ``Explorer`` (see ``vaekit.serve.app.create_app``)."""
    require_serve_packages()
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["Explorer", "ReferenceData", "ServeLimits", "create_app", "require_serve_packages", "SERVE_MODULES"]
