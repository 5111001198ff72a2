"""Transports: where images come from and go to (the Docker daemon and its containerd,
registries; the launch cache to come). Each speaks in the image vocabulary of packcache.image."""
