"""Local stand-ins that speak the real Ably and Anthropic wire protocols."""
