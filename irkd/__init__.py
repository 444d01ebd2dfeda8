"""irkd."""
