"""Small helpers shared across lowbit (progress display, atomic file writes)."""
