"""Transports: where images come from and go to (the Docker daemon, registries; the launch
cache to come). Each speaks in the image vocabulary of packcache.image."""
