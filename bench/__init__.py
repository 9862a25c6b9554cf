"""Benchmarks: lib_mlx's server side by side with raw mlx-lm and ``mlx_lm.server``.

``python -m bench [--quick] [--phone]`` builds random-initialised models offline, measures,
prints one report of medians and writes it into ``bench/RESULTS.md``.
"""
