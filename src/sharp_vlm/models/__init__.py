"""Model adapters: where each family keeps its decoder, positions and visual tokens."""
