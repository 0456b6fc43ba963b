"""Side-by-side speed benchmark of InternVL3.5-1B on this CPU (`python -m bench`, `make bench`).

One invocation builds (or reuses) the exports of the model, measures this machine's ceilings, then runs the
PyTorch eager fp32 baseline (`InternVLForConditionalGeneration.generate`) and each of our configurations
(backend x precision x inference precision) on the same inputs, each in fresh subprocesses so peak memory is
the child's own. It writes bench/results.json, bench/results.md (tables with ratios to the baseline and to
the floors this machine allows) and bench/results.png.

Modules:
  configs    the configurations compared (name -> backend, export precision, inference precision, env)
  machine    measured ceilings (fp32 GEMM GFLOP/s, memory read GB/s) and the floors derived from them
  workloads  the inputs (real photos from scikit-image) and the timed workloads over a "subject"
  subjects   the two subjects: our Engine, and transformers' generate() (the baseline)
  worker     `python -m bench.worker`: one configuration in one process, result as JSON
  server     4 concurrent clients against the real HTTP server (`python -m webapp`)
  report     table, results.json, results.md, results.png
"""
