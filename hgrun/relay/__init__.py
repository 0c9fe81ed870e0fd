"""The attach relay: the Kubernetes WebSocket channel protocol, sans-I/O (:mod:`.protocol`)."""
