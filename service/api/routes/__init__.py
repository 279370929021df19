"""One module per resource; ``service.api.app`` includes their routers."""
