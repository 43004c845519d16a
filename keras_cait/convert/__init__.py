"""Conversion of timm CaiT configurations and weights (NumPy only)."""
