"""Engine I/O: the Docker daemon (later, registries). Everything else reads through here."""
