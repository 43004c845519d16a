"""Explaining predictions: class-attention saliency maps and their pictures."""
