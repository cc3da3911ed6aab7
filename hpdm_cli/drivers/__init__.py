"""One driver per command: `sample`, `upscale`, `evaluate` (hpdm eval), `fvd` (hpdm eval-fvd), `bench`, `prepare`.

A driver checks a request's options, calls the engine and returns a report; the CLI
(`hpdm_cli.cli`) only parses arguments, calls a driver and prints. The generating commands
(sample, upscale, eval, eval-fvd) share `options` (their option and output-path checks) and
`generation` (the sampler built from those options, run per seed); `memory_chart` is
`hpdm bench --memory-chart`. Drivers may import the engine and each other; the engine never
imports a driver.
"""
