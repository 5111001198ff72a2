"""packcache: a host-filesystem layer cache for Cloud Native Buildpacks on the Docker daemon."""

__version__ = "0.1.0"
