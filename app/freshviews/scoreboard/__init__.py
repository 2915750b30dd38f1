"""The reference backend: a live scoreboard on SQLite or PostgreSQL, its cached views, and the demo."""
