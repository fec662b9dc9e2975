"""Live delivery: protocol v1 from the hub reading the channel layer to the WebSocket and SSE transports."""
