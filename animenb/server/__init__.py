"""Tornado server: the /api/anime REST endpoints and the job WebSocket (see app.make_app)."""
