"""Training system: optimiser, schedule, EMA, loop, checkpoints."""
