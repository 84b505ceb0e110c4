"""taskman's REST API: FastAPI over ``core.service``, one router per resource (``api.routers``).

``api.app.create_app`` builds the application; ``taskman api`` serves it with uvicorn.
"""
