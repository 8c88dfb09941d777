"""The one training loop shared by every pre-training stage and fine-tuning task."""
