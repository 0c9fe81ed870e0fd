"""What the acceptance tests share, as plain functions and classes (the fixtures stay in conftest).

- :mod:`.server`: an ``hgrun server`` subprocess on loopback.
- :mod:`.cli`: the ``hgrun`` CLI as a subprocess, and checking what it did.
- :mod:`.api`: a small REST client for one server.
- :mod:`.apps`: app folders on the busybox test image, created and deployed.
- :mod:`.waits`: polling with a deadline.
- :mod:`.store`: a real SQLite store with an app, a release and runs, for unit tests.
"""
