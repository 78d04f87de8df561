"""The edge: an authenticating, streaming ASGI proxy in front of the opencode container."""
