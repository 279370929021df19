"""The REST API (FastAPI): ``app.create_app`` builds it; one router per resource in ``routes/``."""
