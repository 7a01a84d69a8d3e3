"""Benchmarks run by `jaxrl-lm bench NAME`: each module has `main(argv)`."""
