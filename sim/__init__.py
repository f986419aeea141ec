"""tide-moe simulator package.

Importing ``sim`` (and ``sim.model_spec``, ``sim.hardware``, ``sim.cost``, ``sim.policies``) must not
need simpy or plotly: the GPU machines run the runtime with torch only. The SimPy engine lives in
``sim.engine`` and the plotly report in ``sim.report``; import those explicitly.
"""
