"""Real container registries (Debian's docker-registry) started by the tests."""
