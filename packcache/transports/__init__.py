"""Transports: how packcache talks to what holds images (the Docker daemon, containerd)."""
