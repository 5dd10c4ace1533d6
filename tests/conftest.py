"""Shared test configuration."""

from hypothesis import settings

# The same examples on every run: a CI result must not depend on which random histories a run
# happened to draw. Explore new examples locally with --hypothesis-profile=default.
settings.register_profile("reproducible", derandomize=True, print_blob=True)
settings.load_profile("reproducible")
