"""The catalog of specialized agent nodes."""
