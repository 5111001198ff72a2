"""Transports: where image content comes from and goes to (daemon, registry, archives)."""
