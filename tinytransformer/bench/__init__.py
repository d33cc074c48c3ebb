"""Benchmarks: `python -m tinytransformer.bench NAME [options]`.

Each benchmark is a module here with a `main(argv)` function. Benchmarks are
not tests: they measure, side by side in one run, our code and the competitor
it is compared with, and print (or write as JSON) what they measured.
"""
