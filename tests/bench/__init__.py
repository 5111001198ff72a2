"""`make bench`: measurements printed beside their baselines, never asserted in tests."""
