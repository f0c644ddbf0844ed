"""The artifact contract: the typed manifest every stage reads and writes, its tensor specs, and atomic publishing."""
