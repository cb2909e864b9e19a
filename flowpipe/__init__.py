"""flowpipe: Hubble flow analytics for Cilium zero-trust rollouts."""

__version__ = "0.1.0"
