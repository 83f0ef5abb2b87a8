"""Serving: an OpenAI-compatible HTTP server for one model on one device.

``edgellm.serve(model, ServeConfig(...))`` (= ``edgellm.serving.server.serve``) runs it; ``app.py`` holds the API,
``engine.py`` the model worker and its bounded queue, ``constrain.py`` JSON-schema constrained decoding,
``schemas.py`` the request bodies. The package is named ``serving``, not ``serve``, so that importing
it never rebinds the public function ``edgellm.serve``.
"""
