"""Job execution: a papermill engine on warm kernels, typed job events and the async job runner.

Kept free of imports: papermill imports `animenb.runner.engine` through its entry point.
"""
