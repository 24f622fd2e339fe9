"""tracegen: predict per-layer, per-micro-batch timelines of MoE inference deployments."""
__version__ = "0.1.0"
