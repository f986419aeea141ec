"""Validation of the simulator against the runtime.

  calibrate   ``python -m validate.calibrate``: micro-benchmarks of the runtime's own code -> hardware profile
              (rig, timing, tables, bench_experts, bench_layers, bench_store, bench_copies, profile_build)
  compare     ``python -m validate.compare``: replay measured runs in the simulator and compare
              (runs, replay, stats, report)
  gpu_validate.sh  the GPU half (calibrate + runtime runs) in one script; results go to validate/results/

Hold-out: profiles come from micro-benchmarks only; measured runs are compared with, never fed to, the
simulator. The calibrate side needs only torch and numpy (GPU machines); compare needs simpy, scipy, plotly.
"""
