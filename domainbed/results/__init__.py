"""Results of runs and sweeps, torch-free: records (``records``), model selection (``selection``),
DomainBed's tables (``tables``) and figures (``plots``, matplotlib on demand)."""
