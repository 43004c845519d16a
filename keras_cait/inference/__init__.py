"""Inference on image collections: the image pipeline, batched and Ray
predictions streamed to records, top-k decoding and folder evaluation."""
