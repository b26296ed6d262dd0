"""Launching a run: accelerate's launcher for several processes and machines, the Accelerator each
process trains with, DeepSpeed ZeRO configs, and the machine checks made before anything loads."""
