"""Serving: an OpenAI-compatible HTTP server for one model on one device.

``edgellm.serve(model, ServeConfig(...))`` (= ``edgellm.serving.server.serve``) runs it; ``app.py`` holds the API,
``engine.py`` the model worker and its bounded queue, ``schemas.py`` the request bodies, ``middleware.py`` the API-key
check and the request log (JSON-schema
constrained decoding is ``runtimes/constrain.py``). The package is named ``serving``, not ``serve``, so that importing
it never rebinds the public function ``edgellm.serve``.
"""
