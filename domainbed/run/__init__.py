"""One training run: its configuration (``config``), the step loop and resume (``trainer``), the
parts of each record (``contributors``), its folder and files (``folder``), every RNG's state
(``rng_state``), several processes (``distributed``), evaluation (``evaluation``) and what decides
its numbers (``environment``). Import the submodule you need: this package imports nothing."""
