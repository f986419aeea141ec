"""What the simulator and the runtime share, and nothing that runs either: errors, the model spec (from a
Hugging Face ``config.json``) and its presets, hardware profiles and cost models, the GPU budget, the placement
policies with their residency bookkeeping and policy file, counter and result records, the trace schema with its
validation and I/O, and atomic writes.

Imports numpy only (scipy lazily, where a policy solves a program): never simpy, plotly or torch, so a GPU
machine with torch alone can load every piece the runtime needs.
"""
