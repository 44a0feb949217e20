"""xensr's benchmarks: ``python -m benchmarks --help``.

Each comparison is measured interleaved in one run and reported as medians
with their spread and as ratios of medians from that same run.
"""
