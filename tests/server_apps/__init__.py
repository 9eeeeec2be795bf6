"""One small app per framework, served by real servers in tests/test_server_matrix.py.

Each module exposes `app`: the framework's app with MoesifMiddleware where that
framework's README section puts it. Every app answers `GET /fast` at once and
`GET /slow` after SLOW_SECONDS, so that a graceful stop finds calls in flight.
"""
