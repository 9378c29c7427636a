"""Benchmarks: every routing policy on the same problems, statistics, reports and engine perf.

* :mod:`~langchain_rankguide.bench.tasks`: the demo task and JSONL tasks (boxed-answer checker).
* :mod:`~langchain_rankguide.bench.runner`: runs the policies through the one graph
  (``oracle`` and swept thresholds included) and writes ``results.jsonl``.
* :mod:`~langchain_rankguide.bench.stats`: Wilson and bootstrap intervals, paired bootstraps,
  interpolation along sweep curves.
* :mod:`~langchain_rankguide.bench.report`: ``summary.json``, ``report.md``, ``pareto.png``.
* :mod:`~langchain_rankguide.bench.perf`: framework overhead against the raw model.

The command line is ``rankguide bench`` (see ``docs/benchmarks.md``).
"""
