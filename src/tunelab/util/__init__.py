"""Small shared helpers (console output, atomic file writes, hashing)."""
