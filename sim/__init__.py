"""tide-moe simulator package.

Importing ``sim`` (and ``offload.model_spec``, ``offload.hardware``, ``offload.cost``, ``offload.policies``) must not
need simpy or plotly: the GPU machines run the runtime with torch only. The SimPy engine lives in
``sim.engine`` and the plotly report in ``sim.report``; import those explicitly.
"""
