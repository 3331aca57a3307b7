"""``cifarlab serve``: a web page and an HTTP API for trained runs (``pip install
'cifarlab[serve]'``: FastAPI, uvicorn, python-multipart).

- :mod:`cifarlab.serve.settings`: what the server is started with (:class:`Settings`,
  :class:`Launch`, each checked when built), the token's variable, :func:`require` (the extra);
  nothing there imports FastAPI, uvicorn or torch;
- :mod:`cifarlab.serve.engine`: the served runs, their backend, the micro-batcher;
- :mod:`cifarlab.serve.app`: the FastAPI app (routes on a router, shared state on ``app.state``,
  limits, token, JSON errors);
- :mod:`cifarlab.serve.server`: :func:`~cifarlab.serve.server.serve` (load every run, bind the
  socket, then uvicorn; ``--workers N``) and each worker's app;
- ``page.html``: the page (one file: no script, style or font from the internet);
- :mod:`cifarlab.serve.docs`: the offline API docs page, from ``/openapi.json``.

Imports point one way: ``server`` → ``app`` → ``engine``, ``docs``, ``settings``. This package
itself holds only the names that need nothing of the extra (from ``settings``): importing it,
as ``cifarlab serve --help`` does, imports neither FastAPI nor torch.
"""

from cifarlab.serve.settings import EXTRA, TOKEN_ENV, Launch, Settings, require, token_from

__all__ = ["EXTRA", "TOKEN_ENV", "Launch", "Settings", "require", "token_from"]
