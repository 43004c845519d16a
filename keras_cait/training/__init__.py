"""Training: fine-tuning with layer-wise learning-rate decay, and changing a
model's image size (position-embedding resampling)."""
