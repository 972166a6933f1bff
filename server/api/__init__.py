"""The model service (FastAPI): the app, one router per resource, the HTTP error map, the demo page."""
