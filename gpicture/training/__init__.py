"""Training: the engine shared by pre-training and fine-tuning, and the GPICTURE pre-training loop."""
