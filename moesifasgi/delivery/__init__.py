"""Delivery to Moesif: the flusher that drains the queue file (moesifasgi.storage) and posts it.

Layering, one way only: `moesifasgi.storage` (the queue file) <- `moesifasgi.delivery`
(flusher, Moesif client, embedded helper process) <- the middleware, which starts the
embedded flusher, and `moesifasgi_flush` (the `moesif-flush` CLI). Nothing here imports
the middleware or the CLI.
"""
