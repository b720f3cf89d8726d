"""Dataset sources (being written)."""
