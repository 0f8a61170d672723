"""The lean, transformers-compatible PyTorch training loop (imports torch)."""
