"""Small, reusable experiment drivers behind the notebooks (see each module)."""
