"""Private, throw-away Docker engines for the test-suite (see provision.py / harness.py)."""
