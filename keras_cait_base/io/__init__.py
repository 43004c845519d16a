"""File and network input: safetensors, images, JSON and the Hugging Face Hub."""
